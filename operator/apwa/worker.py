"""The helper a Python worker uses: read my input, report my result.

    from apwa import worker
    item = worker.item()                       # this subtask's item (any JSON value)
    worker.emit({"lines": 42})                 # the result; at most 4 KiB as an envelope
    worker.fail("not a CSV file", final=True)  # or give up: final = don't retry

A reduce step reads every result with `worker.results()`. Nothing here needs a cluster: the
operator and `apwa run --local` both pass the same environment variables.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from apwa.results.protocol import FINAL_EXIT_CODE, MAX_RESULT_BYTES, encode_failure, encode_result

DEFAULT_RESULT_PATH = "/dev/termination-log"


def item() -> Any:
    return json.loads(os.environ.get("APWA_ITEM", "null"))


def index() -> int:
    return int(os.environ.get("APWA_INDEX", "0"))


def count() -> int:
    return int(os.environ.get("APWA_COUNT", "1"))


def workload() -> str:
    return os.environ.get("APWA_WORKLOAD", "")


def emit(value: Any) -> None:
    """Report this subtask's result, in the envelope of apwa.results.protocol. Raises ResultTooLarge
    (and writes nothing) when the kubelet would not keep it whole: 4 KiB, less in pods with more
    than three containers (the operator passes the limit as APWA_RESULT_LIMIT)."""
    data = encode_result(value, int(os.environ.get("APWA_RESULT_LIMIT", MAX_RESULT_BYTES)))
    Path(os.environ.get("APWA_RESULT_PATH", DEFAULT_RESULT_PATH)).write_bytes(data)


def fail(message: str, *, final: bool = False) -> NoReturn:
    """End this subtask as failed with `message`. `final=True`: retrying cannot help (bad input),
    so the Job fails at once whatever its backoffLimit, and the failure is listed as Final."""
    path = Path(os.environ.get("APWA_RESULT_PATH", DEFAULT_RESULT_PATH))
    limit = int(os.environ.get("APWA_RESULT_LIMIT", MAX_RESULT_BYTES))
    path.write_bytes(encode_failure(message, final=final, limit=limit))
    print(message, file=sys.stderr, flush=True)
    sys.exit(FINAL_EXIT_CODE if final else 1)


def results() -> dict[str, Any]:
    """For a reduce step: {total, succeeded, failed: [indices], results: [{index, result}]}."""
    path = Path(os.environ["APWA_RESULTS_PATH"])
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # large result sets are stored gzip-compressed
        raw = gzip.decompress(raw)
    return json.loads(raw)
