"""The helper a Python worker uses: read my input, report my result.

    from apwa import worker
    item = worker.item()                       # this subtask's item (any JSON value)
    worker.emit({"lines": 42})                 # the result; at most 4 KiB of JSON

A reduce step reads every result with `worker.results()`. Nothing here needs a cluster: the
operator and `apwa run --local` both pass the same environment variables.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from apwa.results.protocol import encode_result

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
    """Report this subtask's result. Raises ResultTooLarge (and writes nothing) past 4 KiB."""
    data = encode_result(value)
    Path(os.environ.get("APWA_RESULT_PATH", DEFAULT_RESULT_PATH)).write_bytes(data)


def results() -> dict[str, Any]:
    """For a reduce step: {total, succeeded, failed: [indices], results: [{index, result}]}."""
    path = Path(os.environ["APWA_RESULTS_PATH"])
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # large result sets are stored gzip-compressed
        raw = gzip.decompress(raw)
    return json.loads(raw)
