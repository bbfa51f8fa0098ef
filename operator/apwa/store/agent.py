"""`apwa-store`: the operator's helper containers in subtask and reduce pods (worker image).

    apwa-store upload          the store sidecar (a native sidecar: an init container with
                               restartPolicy Always). It waits until the kubelet stops it, which
                               happens once the main container has exited, then uploads the file
                               the main container left at $APWA_OUTPUT_PATH (if any) to this pod's
                               key and reports {"size", "sha256"} in its termination message.
    apwa-store fetch-results   an init container of the reduce pod: streams every recorded
                               outcome, in index order, stored results resolved, into
                               $APWA_RESULTS_PATH as JSON lines.

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
from apwa.results import MAX_STORED_RESULT_BYTES, decode_value, encode_failure, encode_stored
from apwa.results.keys import outcome_chunk_key, result_key
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
        row = {"index": int(i), **entry}
        stored = entry.get("stored")
        if resolve and entry.get("ok") and stored:
            data = await bucket.get(stored["key"])
            if data is None or len(data) != stored.get("size", len(data)):
                raise StoreError("missing", f"result object {stored['key']} is missing or incomplete")
            row = {"index": int(i), "ok": True, "result": decode_value(data)}
        yield json.dumps(row, separators=(",", ":"), ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apwa-store", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upload", help="store sidecar: upload $APWA_OUTPUT_PATH once stopped")
    sub.add_parser("fetch-results", help="reduce init container: every outcome into $APWA_RESULTS_PATH")
    args = parser.parse_args(argv)
    try:
        if args.command == "upload":
            return asyncio.run(upload())
        return asyncio.run(fetch_results())
    except StoreError as e:
        print(f"apwa-store: {e.message}", file=sys.stderr)
        _message(encode_failure(e.message, final=False))
        return 1


if __name__ == "__main__":
    sys.exit(main())
