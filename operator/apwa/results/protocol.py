"""A subtask reports one JSON value through its container's termination message.

Kubernetes keeps at most 4096 bytes of a termination message, so a result is encoded as compact
JSON and refused (never silently cut) past that. Larger outputs belong in the worker's own store,
with a reference to them as the result.
"""

from __future__ import annotations

import json
from typing import Any

MAX_RESULT_BYTES = 4096


class ResultTooLarge(ValueError):
    pass


def encode_result(value: Any) -> bytes:
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_RESULT_BYTES:
        raise ResultTooLarge(
            f"result is {len(data)} bytes; a termination message holds at most {MAX_RESULT_BYTES}. "
            "Store large outputs elsewhere and return a reference to them."
        )
    return data


def decode_result(message: str | None) -> Any:
    """The result a finished container reported. Text that is not JSON is kept as a string."""
    if message is None:
        return None
    text = message.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
