"""The helper a Python worker uses: read my input, report my result.

    from apwa import worker
    item = worker.item()                       # this subtask's item (any JSON value)
    worker.emit({"lines": 42})                 # the result (4 KiB at most, unless there is a store)
    worker.fail("not a CSV file", final=True)  # or give up: final = don't retry
    worker.inputs()                            # decomposition.objects: this subtask's input files

A reduce step reads every result with `worker.results()` (or `worker.iter_results()`, one at a
time, for results that don't fit in memory together). Nothing here needs a cluster: the operator
and `apwa run --local` both pass the same environment variables.

With an object store (spec.store) the operator sets $APWA_OUTPUT_PATH: a result too big for the
termination message is written there, and the pod's store sidecar uploads it once this container
has exited. Workers in other languages do the same: write the result (JSON, or text) to
$APWA_OUTPUT_PATH and exit 0.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from apwa.results.protocol import (
    FINAL_EXIT_CODE,
    MAX_RESULT_BYTES,
    ResultTooLarge,
    encode_failure,
    encode_result,
    encode_usage,
)

DEFAULT_RESULT_PATH = "/dev/termination-log"


def item() -> Any:
    planned = _planned()
    return planned["item"] if planned is not None else json.loads(os.environ.get("APWA_ITEM", "null"))


def index() -> int:
    planned = _planned()
    return int(planned["index"]) if planned is not None else int(os.environ.get("APWA_INDEX", "0"))


def _planned() -> dict[str, Any] | None:
    """Packed execution (spec.execution.mode Packed): the pods of a chunk share one template, so
    each reads its subtask from the chunk's plan, the line of its Indexed Job completion index."""
    path = os.environ.get("APWA_PLAN_PATH")
    if not path:
        return None
    k = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if n == k:
                return json.loads(line)
    raise SystemExit(f"apwa: {path} has no line {k} (JOB_COMPLETION_INDEX): the chunk's plan does not match its Job")


def count() -> int:
    return int(os.environ.get("APWA_COUNT", "1"))


def workload() -> str:
    return os.environ.get("APWA_WORKLOAD", "")


def inputs() -> list[Path]:
    """decomposition.objects: this subtask's input files, in key order. The pod's fetch container
    downloaded them into $APWA_INPUT_DIR (read-only) before this container started."""
    from apwa.planning.objects import input_name

    directory = os.environ.get("APWA_INPUT_DIR")
    if not directory:
        raise RuntimeError("$APWA_INPUT_DIR is not set: only decomposition.objects subtasks have input files")
    prefix = os.environ.get("APWA_INPUT_PREFIX", "")
    return [Path(directory) / input_name(prefix, key) for key in item()["keys"]]


def emit(value: Any, *, usage: dict[str, Any] | None = None) -> None:
    """Report this subtask's result, in the envelope of apwa.results.protocol.

    Small results go into the termination message. Without a store, a result the kubelet would
    not keep whole (4 KiB, less in pods with more than three containers: the operator passes the
    limit as APWA_RESULT_LIMIT) raises ResultTooLarge and writes nothing. With a store it is
    written to $APWA_OUTPUT_PATH instead, for the store sidecar to upload.

    `usage` (what an agent spent: docs/results.md) travels in the envelope; with a stored result,
    in this container's message alone."""
    limit = int(os.environ.get("APWA_RESULT_LIMIT", MAX_RESULT_BYTES))
    output = os.environ.get("APWA_OUTPUT_PATH")
    result_path = Path(os.environ.get("APWA_RESULT_PATH", DEFAULT_RESULT_PATH))
    try:
        data = encode_result(value, limit, usage)
    except ResultTooLarge:
        if not output:
            raise
        _write_atomically(Path(output), json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if usage is not None:
            result_path.write_bytes(encode_usage(usage))
        return
    result_path.write_bytes(data)


def _write_atomically(path: Path, data: bytes) -> None:
    """The sidecar must never upload half a file: write aside, then rename."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def fail(message: str, *, final: bool = False, usage: dict[str, Any] | None = None) -> NoReturn:
    """End this subtask as failed with `message`. `final=True`: retrying cannot help (bad input),
    so the Job fails at once whatever its backoffLimit, and the failure is listed as Final."""
    path = Path(os.environ.get("APWA_RESULT_PATH", DEFAULT_RESULT_PATH))
    limit = int(os.environ.get("APWA_RESULT_LIMIT", MAX_RESULT_BYTES))
    path.write_bytes(encode_failure(message, final=final, limit=limit, usage=usage))
    print(message, file=sys.stderr, flush=True)
    sys.exit(FINAL_EXIT_CODE if final else 1)


def results() -> dict[str, Any]:
    """For a reduce step: {total, succeeded, failed: [indices], results: [{index, result}]}."""
    path = Path(os.environ["APWA_RESULTS_PATH"])
    if path.suffix == ".jsonl":
        out: dict[str, Any] = {"total": count(), "succeeded": 0, "failed": [], "results": []}
        for row in iter_outcomes():
            if row.get("ok"):
                out["results"].append({"index": row["index"], "result": row.get("result")})
            else:
                out["failed"].append(row["index"])
        out["succeeded"] = len(out["results"])
        return out
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # large result sets are stored gzip-compressed
        raw = gzip.decompress(raw)
    return json.loads(raw)


def iter_results() -> Iterator[tuple[int, Any]]:
    """For a reduce step: (index, result) of every succeeded subtask in index order, one at a time."""
    path = Path(os.environ["APWA_RESULTS_PATH"])
    if path.suffix != ".jsonl":
        for r in results()["results"]:
            yield r["index"], r["result"]
        return
    for row in iter_outcomes():
        if row.get("ok"):
            yield row["index"], row.get("result")


def iter_outcomes() -> Iterator[dict[str, Any]]:
    """Every outcome the reduce step received, as the store holds it: {"index", "ok", "result"} or
    {"index", "ok": false, "reason", "message"}; only with a store (a .jsonl results file)."""
    with Path(os.environ["APWA_RESULTS_PATH"]).open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
