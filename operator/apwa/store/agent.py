"""`apwa-store`: the operator's helper containers in subtask and reduce pods (worker image).

    apwa-store upload          the store sidecar (a native sidecar: an init container with
                               restartPolicy Always). It waits until the kubelet stops it, which
                               happens once the main container has exited, then uploads the file
                               the main container left at $APWA_OUTPUT_PATH (if any) to this pod's
                               key and reports {"size", "sha256"} in its termination message.
    apwa-store fetch-results   an init container of the reduce pod: streams every recorded
                               outcome, in index order, stored results resolved, into
                               $APWA_RESULTS_PATH as JSON lines.
    apwa-store fetch-inputs    an init container of a subtask pod (decomposition.objects):
                               downloads the objects of its item ($APWA_ITEM {"keys": [...]})
                               into $APWA_INPUT_DIR, each named by its key minus
                               $APWA_INPUT_PREFIX (apwa.planning.objects.input_name).

Only these containers get the store's credentials (from the Secret, as environment variables);
the worker's containers never do. Why a sidecar after the fact rather than an upload API: any
image can write a file, none needs an SDK, and the upload can't be skipped by a worker that forgets
to call it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from apwa.common.retry import Backoff
from apwa.planning.objects import input_name
from apwa.results import MAX_STORED_RESULT_BYTES, decode_value, encode_failure, encode_stored
from apwa.results.keys import outcome_chunk_key, result_key
from apwa.store import exit_without_finalizing
from apwa.store.s3 import Bucket, Credentials, Location, StoreError

DEFAULT_MESSAGE_PATH = "/dev/termination-log"


def _bucket() -> Bucket:
    return Bucket(Location.from_env(), Credentials.from_env())


def _message(data: bytes) -> None:
    Path(os.environ.get("APWA_RESULT_PATH", DEFAULT_MESSAGE_PATH)).write_bytes(data)


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def upload(wait: bool = True) -> int:
    output = Path(os.environ["APWA_OUTPUT_PATH"])
    key = result_key(os.environ["APWA_STORE_ROOT"], _index(), os.environ["APWA_POD_UID"])
    deadline = float(os.environ.get("APWA_UPLOAD_TIMEOUT", "300"))
    if wait:
        await _wait_for_stop()
    started = time.monotonic()
    size = _size(output)
    if size is None:
        return 0  # nothing to upload: the result, if any, is inline in the main container's message
    if size > MAX_STORED_RESULT_BYTES:
        _message(
            encode_failure(f"the result file is {size} bytes; at most {MAX_STORED_RESULT_BYTES} are stored", final=True)
        )
        return 1
    bucket = _bucket()
    backoff = Backoff(1.0, 15.0)
    # A little before the kubelet's SIGKILL, so the failure message gets written.
    budget = max(deadline - 5.0, 1.0)
    while True:
        try:
            size, digest = await bucket.put_file(key, output)
        except StoreError as e:
            left = budget - (time.monotonic() - started)
            if e.kind == "unavailable" and left > 1.0:
                print(f"upload failed, retrying: {e.message}", file=sys.stderr, flush=True)
                await asyncio.sleep(min(backoff.next(), left - 1.0))
                continue
            _message(encode_failure(e.message, final=False))
            return 1
        _message(encode_stored(size, digest))
        print(f"stored {size} bytes as {key}", file=sys.stderr, flush=True)
        return 0


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _index() -> int | None:
    raw = os.environ.get("APWA_INDEX")
    return int(raw) if raw not in (None, "") else None


async def fetch_results() -> int:
    """Every recorded outcome, chunk by chunk (each sorted), so memory holds one chunk and one result."""
    root = os.environ["APWA_STORE_ROOT"]
    chunks = int(os.environ["APWA_OUTCOME_CHUNKS"])
    out = Path(os.environ["APWA_RESULTS_PATH"])
    bucket = _bucket()
    tmp = out.with_name(out.name + ".part")
    with tmp.open("w") as f:
        for chunk in range(chunks):
            async for line in outcome_lines(bucket, root, chunk, resolve=True):
                f.write(line + "\n")
    tmp.rename(out)
    return 0


async def outcome_lines(bucket: Bucket, root: str, chunk: int, *, resolve: bool) -> AsyncIterator[str]:
    """One chunk's outcomes as JSON lines in index order: {"index", "ok", "result" | "stored" | failure}."""
    raw = await bucket.get(outcome_chunk_key(root, chunk))
    entries = json.loads(raw).get("outcomes", {}) if raw else {}
    for i in sorted(entries, key=int):
        entry = entries[i]
        if "retry" in entry:  # a subtask a retry runs again (controller/store.py PENDING): no outcome
            continue
        row = {"index": int(i), **entry}
        stored = entry.get("stored")
        if resolve and entry.get("ok") and stored:
            data = await bucket.get(stored["key"])
            if data is None or len(data) != stored.get("size", len(data)):
                raise StoreError("missing", f"result object {stored['key']} is missing or incomplete")
            row = {"index": int(i), "ok": True, "result": decode_value(data)}
        yield json.dumps(row, separators=(",", ":"), ensure_ascii=False)


FETCH_CONCURRENCY = 8


async def fetch_inputs() -> int:
    """Every object of this subtask's item into the input directory, a few at a time; a key that
    would land outside the directory is refused. No part files: the main containers start only
    once this container has succeeded, and a failed pod's retry gets a fresh volume."""
    keys = json.loads(os.environ["APWA_ITEM"])["keys"]
    root, targets = _input_paths(Path(os.environ["APWA_INPUT_DIR"]), os.environ["APWA_INPUT_PREFIX"], keys)
    bucket = _bucket()
    slots = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(key: str, path: Path) -> int:
        async with slots:
            return await _download(bucket, key, path)

    sizes = await asyncio.gather(*(one(key, path) for key, path in targets))
    print(f"fetched {len(keys)} objects, {sum(sizes)} bytes, into {root}", file=sys.stderr, flush=True)
    return 0


def _input_paths(directory: Path, prefix: str, keys: list[str]) -> tuple[Path, list[tuple[str, Path]]]:
    root = directory.resolve()
    targets = []
    for key in keys:
        try:
            path = (root / input_name(prefix, key)).resolve()
        except ValueError as e:
            raise StoreError("missing", str(e)) from None
        if not path.is_relative_to(root) or path == root:
            raise StoreError("missing", f"key {key!r} would be written outside {root}")
        targets.append((key, path))
    return root, targets


async def _download(bucket: Bucket, key: str, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with path.open("wb") as f:
        async for piece in bucket.stream(key):
            f.write(piece)
            size += len(piece)
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apwa-store", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upload", help="store sidecar: upload $APWA_OUTPUT_PATH once stopped")
    sub.add_parser("fetch-results", help="reduce init container: every outcome into $APWA_RESULTS_PATH")
    sub.add_parser("fetch-inputs", help="subtask init container: the item's objects into $APWA_INPUT_DIR")
    args = parser.parse_args(argv)
    commands = {"upload": upload, "fetch-results": fetch_results, "fetch-inputs": fetch_inputs}
    try:
        return asyncio.run(commands[args.command]())
    except StoreError as e:
        print(f"apwa-store: {e.message}", file=sys.stderr)
        _message(encode_failure(e.message, final=False))
        return 1


def cli() -> None:
    """The console script: main(), then an exit that skips finalization (see exit_without_finalizing)."""
    exit_without_finalizing(main())


if __name__ == "__main__":
    cli()
