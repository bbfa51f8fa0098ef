"""Durable results: every finished subtask's outcome, in chunks owned by the workload.

Without an object store the chunks are ConfigMaps (CHUNK subtasks each, so that a write only
rewrites the chunk that changed and no ConfigMap can pass the 1 MiB object limit: CHUNK x 4 KiB
results < 1 MiB; gzip-compressed in binaryData when large). With one (spec.store) they are
objects in the bucket (OUTCOME_CHUNK subtasks each), and etcd holds no outcome at all. Memory
holds only the chunks that are still filling. The store is the operator's memory across
restarts: an outcome that is in a chunk is never collected twice, and a subtask Job's TTL is
applied only after its outcome is stored here.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from apwa.api.models import StoreSpec
from apwa.api.vocabulary import Reason, Role
from apwa.core import Reset, Stalled
from apwa.kube.client import ApiError, Kube, ns_path
from apwa.rendering import LABEL_ROLE, LABEL_UID, Owner, child_name
from apwa.rendering.jobs import metadata
from apwa.results import SubtaskOutcome
from apwa.results.keys import OUTCOME_CHUNK, outcome_chunk_key, outcomes_prefix
from apwa.store.s3 import Bucket, Credentials, Location, StoreError

CHUNK = 200
KEY = "results.json"
COMPRESS_ABOVE = 256 * 1024
LABEL_CHUNK = "apwa.dev/chunk"


def chunk_name(workload: str, chunk: int) -> str:
    return child_name(workload, f"results-{chunk}")


def encode_outcome(o: SubtaskOutcome) -> dict[str, Any]:
    # The usage is stored with the outcome: status.usage is rebuilt from these after a restart.
    spent = {"usage": o.usage} if o.usage else {}
    if o.succeeded:
        kept = {"stored": o.stored} if o.stored is not None else {"result": o.result}
        return {"ok": True, **kept, **spent}
    entry: dict[str, Any] = {"ok": False, "reason": o.reason, "message": o.message, **spent}
    if o.exit_code is not None:
        entry["exitCode"] = o.exit_code
    if o.failed_pods:
        entry["failedPods"] = o.failed_pods
    return entry


# A subtask a retry reset (core/retry.py): {"retry": attempt, "was": the failure it replaces}
# until its new outcome takes the entry's place. It is not an outcome: readers skip it.
PENDING = "retry"


def pending_entry(r: Reset) -> dict[str, Any]:
    return {PENDING: r.attempt, "was": r.was, **({"usage": r.usage} if r.usage else {})}


def is_pending(entry: dict[str, Any]) -> bool:
    return PENDING in entry


def decode_outcome(index: int, entry: dict[str, Any]) -> SubtaskOutcome:
    usage = entry.get("usage")
    if entry.get("ok"):
        return SubtaskOutcome(index, True, result=entry.get("result"), stored=entry.get("stored"), usage=usage)
    return SubtaskOutcome(
        index,
        False,
        reason=entry.get("reason", ""),
        message=entry.get("message", ""),
        exit_code=entry.get("exitCode"),
        failed_pods=entry.get("failedPods"),
        usage=usage,
    )


def config_map_body(owner: Owner, name: str, payload: bytes, extra_labels: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(owner, name, extra_labels)}
    if len(payload) > COMPRESS_ABOVE:
        body["binaryData"] = {KEY: base64.b64encode(gzip.compress(payload, 6)).decode()}
    else:
        body["data"] = {KEY: payload.decode()}
    return body


def read_payload(cm: dict[str, Any]) -> bytes:
    if KEY in (cm.get("binaryData") or {}):
        raw = base64.b64decode(cm["binaryData"][KEY])
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    return ((cm.get("data") or {}).get(KEY) or "").encode()


class Chunks(Protocol):
    """Where chunks of outcomes are kept: ConfigMaps, or objects in a bucket."""

    size: int

    def listing(self) -> AsyncIterator[tuple[int, bytes]]: ...

    async def read(self, chunk: int) -> bytes | None: ...

    async def write(self, chunk: int, payload: bytes) -> None: ...

    def ref(self, chunks: int) -> dict[str, Any]: ...


class ConfigMapChunks:
    size = CHUNK

    def __init__(self, kube: Kube, owner: Owner) -> None:
        self.kube, self.owner = kube, owner
        self._exists: set[int] = set()

    def _path(self, name: str | None = None) -> str:
        assert self.owner.namespace
        return ns_path("v1", self.owner.namespace, "configmaps", name)

    async def listing(self) -> AsyncIterator[tuple[int, bytes]]:
        selector = f"{LABEL_UID}={self.owner.uid},{LABEL_ROLE}={Role.RESULTS}"
        async for cm in self.kube.list(self._path(), labelSelector=selector):
            chunk = int(cm["metadata"]["labels"].get(LABEL_CHUNK, "-1"))
            self._exists.add(chunk)
            yield chunk, read_payload(cm)

    async def read(self, chunk: int) -> bytes | None:
        cm = await self.kube.get(self._path(chunk_name(self.owner.name, chunk)))
        if cm is None:
            return None
        self._exists.add(chunk)
        return read_payload(cm)

    async def write(self, chunk: int, payload: bytes) -> None:
        name = chunk_name(self.owner.name, chunk)
        body = config_map_body(self.owner, name, payload, {LABEL_ROLE: Role.RESULTS, LABEL_CHUNK: str(chunk)})
        if chunk not in self._exists:
            created, _ = await self.kube.create(self._path(), body)
            self._exists.add(chunk)
            if created:
                return
        # Unconditional replace: this operator is the only writer of its workload's chunks.
        await self.kube.put(self._path(name), body)

    def ref(self, chunks: int) -> dict[str, Any]:
        return {"configMapPrefix": child_name(self.owner.name, "results-"), "chunks": chunks, "key": KEY}


class ObjectChunks:
    """Chunks as objects `<root>outcomes/<n>.json`. A PUT replaces an object whole, and is
    visible only once complete, so a reader never sees half a chunk."""

    size = OUTCOME_CHUNK

    def __init__(self, bucket: Bucket, root: str) -> None:
        self.bucket, self.root = bucket, root

    async def listing(self) -> AsyncIterator[tuple[int, bytes]]:
        async for key, _ in _store_call(self.bucket.keys(outcomes_prefix(self.root))):
            data = await _store_await(self.bucket.get(key))
            if data is not None:
                yield int(key.rsplit("/", 1)[1].split(".")[0]), data

    async def read(self, chunk: int) -> bytes | None:
        data: bytes | None = await _store_await(self.bucket.get(outcome_chunk_key(self.root, chunk)))
        return data

    async def write(self, chunk: int, payload: bytes) -> None:
        await _store_await(self.bucket.put(outcome_chunk_key(self.root, chunk), payload))

    def ref(self, chunks: int) -> dict[str, Any]:
        return {
            "bucket": self.bucket.where.bucket,
            "objectPrefix": outcomes_prefix(self.root),
            "chunks": chunks,
            "chunkSize": self.size,
        }


def store_stall(e: StoreError) -> Stalled:
    """A store error as the condition that reports it; every kind waits and resumes by itself."""
    if e.kind == "auth":
        return Stalled(Reason.STORE_ACCESS_DENIED, e.message, retry=30)
    if e.kind == "missing":
        return Stalled(Reason.STORE_NOT_FOUND, e.message, retry=30)
    return Stalled(Reason.STORE_UNAVAILABLE, f"{e.message}; waiting for the store and retrying", retry=5)


async def _store_await(awaitable: Any) -> Any:
    try:
        return await awaitable
    except StoreError as e:
        raise store_stall(e) from None


async def _store_call(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for item in stream:
            yield item
    except StoreError as e:
        raise store_stall(e) from None


async def open_bucket(kube: Kube, namespace: str, store: StoreSpec, root: str) -> Bucket:
    """The workload's bucket, with the credentials of its Secret; checked before anything depends on it."""
    secret = store.s3.credentials_secret
    where = "spec.store.s3.credentialsSecret"
    try:
        body = await kube.get(ns_path("v1", namespace, "secrets", secret))
    except ApiError as e:
        if e.status == 403:
            raise Stalled(
                Reason.STORE_ACCESS_DENIED,
                f"the operator may not read Secret {secret!r} ({where}): add it to the chart value "
                f"rbac.secretNames (helm upgrade ... --set 'rbac.secretNames={{{secret}}}')",
                retry=60,
            ) from None
        raise
    if body is None:
        raise Stalled(
            Reason.STORE_ACCESS_DENIED, f"Secret {secret!r} ({where}) not found in namespace {namespace!r}", retry=30
        )
    try:
        creds = Credentials.from_secret_data(body.get("data") or {}, secret)
    except StoreError as e:
        raise Stalled(Reason.STORE_ACCESS_DENIED, f"{e.message} ({where})", retry=60) from None
    bucket = Bucket(Location.from_spec(store.s3), creds)
    try:
        await bucket.check(root)
    except StoreError as e:
        stall = store_stall(e)
        if e.kind == "auth":
            stall.message += f" (Secret {secret!r}, {where})"
        raise stall from None
    return bucket


class ResultStore:
    def __init__(self, chunks: Chunks, total: int) -> None:
        self.backend = chunks
        self.size = chunks.size
        self.total = total
        self.chunks = (total + self.size - 1) // self.size
        self._open: dict[int, dict[str, dict[str, Any]]] = {}  # chunk -> index -> outcome entry
        self._dirty: set[int] = set()
        self._lock = asyncio.Lock()

    @property
    def ref(self) -> dict[str, Any]:
        return self.backend.ref(self.chunks)

    async def load(self) -> tuple[list[SubtaskOutcome], list[Reset]]:
        """Every stored outcome, and every subtask a retry reset that has none yet (without
        keeping complete chunks in memory)."""
        out: list[SubtaskOutcome] = []
        pending: list[Reset] = []
        async for chunk, payload in self.backend.listing():
            entries = json.loads(payload or b"{}").get("outcomes", {})
            if not self._complete(chunk, entries):
                self._open[chunk] = entries
            for i, e in entries.items():
                if is_pending(e):
                    pending.append(Reset(int(i), int(e[PENDING]), e.get("was") or {}, e.get("usage")))
                else:
                    out.append(decode_outcome(int(i), e))
        return out, pending

    def _chunk_size(self, chunk: int) -> int:
        return min(self.size, self.total - chunk * self.size)

    def _complete(self, chunk: int, entries: dict[str, dict[str, Any]]) -> bool:
        """Every subtask of the chunk has its outcome: nothing will change it (but a retry)."""
        return len(entries) >= self._chunk_size(chunk) and not any(is_pending(e) for e in entries.values())

    async def reset(self, resets: Iterable[Reset]) -> None:
        """A retry: these subtasks' outcomes become pending entries, durably. Complete chunks
        left memory, so they are read back first."""
        resets = list(resets)
        for chunk in sorted({r.index // self.size for r in resets} - set(self._open)):
            payload = await self.backend.read(chunk)
            self._open[chunk] = json.loads(payload or b"{}").get("outcomes", {})
        for r in resets:
            chunk = r.index // self.size
            self._open[chunk][str(r.index)] = pending_entry(r)
            self._dirty.add(chunk)
        await self.flush()

    def add(self, outcome: SubtaskOutcome) -> None:
        chunk = outcome.index // self.size
        self._open.setdefault(chunk, {})[str(outcome.index)] = encode_outcome(outcome)
        self._dirty.add(chunk)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    async def flush(self) -> None:
        """Write every changed chunk; chunks that are complete then leave memory."""
        async with self._lock:
            dirty, self._dirty = self._dirty, set()
            try:
                await asyncio.gather(*(self._write(c) for c in sorted(dirty)))
            except BaseException:
                self._dirty |= dirty  # written again on the next flush
                raise
            for c in dirty:
                if self._complete(c, self._open.get(c, {})):
                    self._open.pop(c, None)

    async def _write(self, chunk: int) -> None:
        entries = self._open[chunk]
        payload = json.dumps({"chunk": chunk, "outcomes": entries}, separators=(",", ":")).encode()
        await self.backend.write(chunk, payload)

    async def all_results(self) -> Iterable[SubtaskOutcome]:
        """Read back every stored outcome (for the reduce input and the result summary)."""
        outcomes: dict[int, SubtaskOutcome] = {}
        async for _, payload in self.backend.listing():
            for i, e in json.loads(payload or b"{}").get("outcomes", {}).items():
                if not is_pending(e):
                    outcomes[int(i)] = decode_outcome(int(i), e)
        return [outcomes[i] for i in sorted(outcomes)]
