"""Durable results: every finished subtask's outcome, in ConfigMaps owned by the workload.

Results are chunked (CHUNK subtasks per ConfigMap) so that a write only rewrites the chunk that
changed, no ConfigMap can pass the 1 MiB object limit (CHUNK x 4 KiB results < 1 MiB), and memory
holds only the chunks that are still filling. A chunk is gzip-compressed (binaryData) when large.
The store is the operator's memory across restarts: an outcome that is in a chunk is never
collected twice, and a subtask Job's TTL is applied only after its outcome is stored here.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import Iterable
from typing import Any

from apwa.api.vocabulary import Role
from apwa.kube.client import Kube, ns_path
from apwa.rendering import LABEL_ROLE, LABEL_UID, Owner, child_name
from apwa.rendering.jobs import metadata
from apwa.results import SubtaskOutcome

CHUNK = 200
KEY = "results.json"
COMPRESS_ABOVE = 256 * 1024
LABEL_CHUNK = "apwa.dev/chunk"


def chunk_name(workload: str, chunk: int) -> str:
    return child_name(workload, f"results-{chunk}")


def encode_outcome(o: SubtaskOutcome) -> dict[str, Any]:
    if o.succeeded:
        return {"ok": True, "result": o.result}
    entry: dict[str, Any] = {"ok": False, "reason": o.reason, "message": o.message}
    if o.exit_code is not None:
        entry["exitCode"] = o.exit_code
    if o.failed_pods:
        entry["failedPods"] = o.failed_pods
    return entry


def decode_outcome(index: int, entry: dict[str, Any]) -> SubtaskOutcome:
    if entry.get("ok"):
        return SubtaskOutcome(index, True, result=entry.get("result"))
    return SubtaskOutcome(
        index,
        False,
        reason=entry.get("reason", ""),
        message=entry.get("message", ""),
        exit_code=entry.get("exitCode"),
        failed_pods=entry.get("failedPods"),
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


class ResultStore:
    def __init__(self, kube: Kube, owner: Owner, total: int) -> None:
        self.kube = kube
        self.owner = owner
        self.total = total
        self.chunks = (total + CHUNK - 1) // CHUNK
        self._open: dict[int, dict[str, dict[str, Any]]] = {}  # chunk -> index -> outcome entry
        self._dirty: set[int] = set()
        self._exists: set[int] = set()
        self._lock = asyncio.Lock()

    def _path(self, name: str | None = None) -> str:
        assert self.owner.namespace
        return ns_path("v1", self.owner.namespace, "configmaps", name)

    def _selector(self) -> str:
        return f"{LABEL_UID}={self.owner.uid},{LABEL_ROLE}={Role.RESULTS}"

    async def load(self) -> list[SubtaskOutcome]:
        """Every stored outcome (without keeping complete chunks in memory)."""
        out: list[SubtaskOutcome] = []
        async for cm in self.kube.list(self._path(), labelSelector=self._selector()):
            chunk = int(cm["metadata"]["labels"].get(LABEL_CHUNK, "-1"))
            entries = json.loads(read_payload(cm) or b"{}").get("outcomes", {})
            self._exists.add(chunk)
            if len(entries) < self._chunk_size(chunk):
                self._open[chunk] = entries
            out += [decode_outcome(int(i), e) for i, e in entries.items()]
        return out

    def _chunk_size(self, chunk: int) -> int:
        return min(CHUNK, self.total - chunk * CHUNK)

    def add(self, outcome: SubtaskOutcome) -> None:
        chunk = outcome.index // CHUNK
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
                if len(self._open.get(c, {})) >= self._chunk_size(c):
                    self._open.pop(c, None)

    async def _write(self, chunk: int) -> None:
        entries = self._open[chunk]
        payload = json.dumps({"chunk": chunk, "outcomes": entries}, separators=(",", ":")).encode()
        name = chunk_name(self.owner.name, chunk)
        body = config_map_body(self.owner, name, payload, {LABEL_ROLE: Role.RESULTS, LABEL_CHUNK: str(chunk)})
        if chunk not in self._exists:
            created, _ = await self.kube.create(self._path(), body)
            self._exists.add(chunk)
            if created:
                return
        # Unconditional replace: this operator is the only writer of its workload's chunks.
        await self.kube.put(self._path(name), body)

    async def all_results(self) -> Iterable[SubtaskOutcome]:
        """Read back every stored outcome (for the reduce input and the result summary)."""
        outcomes: dict[int, SubtaskOutcome] = {}
        async for cm in self.kube.list(self._path(), labelSelector=self._selector()):
            for i, e in json.loads(read_payload(cm) or b"{}").get("outcomes", {}).items():
                outcomes[int(i)] = decode_outcome(int(i), e)
        return [outcomes[i] for i in sorted(outcomes)]
