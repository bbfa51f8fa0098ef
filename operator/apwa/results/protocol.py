"""A subtask reports its result through its container's termination message, as an envelope.

The envelope is one small, versioned JSON object:

    {"apwa": 1, "len": 11, "value": {"lines": 42}}

`value` is the result (any JSON value) and `len` the byte length of its compact JSON encoding, so
a message the kubelet cut is detected rather than taken for a result. The kubelet keeps the
*last* 4096 bytes of a container's termination file, and then cuts every container's message of a
pod to 12 KiB divided by the number of containers (init and ephemeral ones included), keeping the
*first* bytes: either cut breaks the envelope. Later features add keys (a reference to a stored
object, usage figures, a "final" mark); readers ignore keys they do not know. With an object
store, the pod's store sidecar reports the upload it made in its own termination message:

    {"apwa": 1, "stored": {"size": 5242880, "sha256": "9f86d0..."}}

The object's key is not in the message: it is derived from (workload uid, index, pod uid) by
apwa.results.keys, so a message can't point a result at somebody else's object. A bare JSON value
(anything that is not an envelope) still works as a result: it is what older workers write.
docs/results.md describes the protocol for worker authors.
"""

from __future__ import annotations

import json
from typing import Any

from apwa.common import kjson

MAX_RESULT_BYTES = 4096  # the kubelet's limit for one container's termination message
MAX_POD_MESSAGE_BYTES = 12 * 1024  # shared by all containers of a pod
# The documented ceiling of one stored result (the store sidecar refuses more; the output volume
# is sized for it).
MAX_STORED_RESULT_BYTES = 1024**3
ENVELOPE_VERSION = 1
ENVELOPE_KEY = "apwa"
# A worker that knows retrying is useless (bad input) exits with this code after writing a failure
# envelope with "final": true; every rendered Job's podFailurePolicy fails at once on it.
FINAL_EXIT_CODE = 86
_ENVELOPE_PREFIX = '{"' + ENVELOPE_KEY + '":'
# One report's token and request counts: far above any real pod's, and low enough that the sums
# over 100,000 subtasks stay inside the CRD's int64 fields.
MAX_USAGE_COUNT = 10**12
MAX_USAGE_SECONDS = 10**9


class ResultTooLarge(ValueError):
    pass


class ResultTruncated(ValueError):
    """The termination message was cut by the kubelet: the result is lost, not partial."""


class ResultInvalid(ValueError):
    """The message is whole but can't be taken as a result: an envelope of an invalid version, or
    JSON that the workload's status can't hold (apwa.common.kjson: NaN, Infinity, numbers beyond
    float64, deep nesting)."""


def _loads(text: str) -> Any:
    """The message's JSON; json.JSONDecodeError when it is none, ResultInvalid when Kubernetes
    could not carry it (kjson.NotJsonConstant, a ResultInvalid too, for NaN and Infinity)."""
    try:
        return kjson.loads(text)
    except kjson.NotJsonConstant as e:
        raise _NotJson(str(e)) from None
    except kjson.UnfitJson as e:
        raise ResultInvalid(str(e)) from None


class _NotJson(ResultInvalid):
    """NaN or Infinity: not JSON, although Python's json reads it."""


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_result(value: Any, limit: int = MAX_RESULT_BYTES, usage: dict[str, Any] | None = None) -> bytes:
    """The envelope for `value` (and the agent's `usage`); ResultTooLarge (nothing written) when it
    would not fit `limit`."""
    body = _compact(value)
    extra = f',"usage":{_compact(usage)}' if usage is not None else ""
    data = f'{_ENVELOPE_PREFIX}{ENVELOPE_VERSION},"len":{len(body.encode())},"value":{body}{extra}}}'.encode()
    if len(data) > limit:
        raise ResultTooLarge(
            f"result is {len(data)} bytes; a termination message holds at most {limit} (envelope included). "
            "Store large outputs elsewhere and return a reference to them."
        )
    return data


def encode_failure(
    message: str, *, final: bool, limit: int = MAX_RESULT_BYTES, usage: dict[str, Any] | None = None
) -> bytes:
    """A failure envelope: {"apwa": 1, "error": message, "final": bool} (and the `usage` an agent
    spent failing: tokens count against a budget whether or not the answer was usable). The message
    is text for people, so it is shortened (keeping its end, where the cause usually is) to fit `limit`."""
    text = message
    extra = {"usage": usage} if usage is not None else {}
    while True:
        data = _compact({ENVELOPE_KEY: ENVELOPE_VERSION, "error": text, "final": final, **extra}).encode()
        if len(data) <= limit or not text:
            return data
        text = "..." + text[-max(len(text) - (len(data) - limit) - 8, 0) :]


def encode_usage(usage: dict[str, Any]) -> bytes:
    """An envelope with usage and no value, for the main container of a pod whose result went to
    the store (the sidecar's message carries the result; this one only what the agent spent)."""
    return _compact({ENVELOPE_KEY: ENVELOPE_VERSION, "usage": usage}).encode()


USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "requests", "retries")


def decode_usage(message: str | None) -> dict[str, Any] | None:
    """The `usage` of an envelope, or None: absent (a worker that is no agent, a bare value, a cut
    message) or malformed. Counts are non-negative integers, latency_seconds a non-negative number;
    a field of another shape is left out rather than guessed."""
    text = (message or "").strip()
    if not text.startswith(_ENVELOPE_PREFIX):
        return None
    try:
        usage = _loads(text).get("usage")
    except (ValueError, AttributeError):  # not JSON, not an object, or JSON the status can't hold
        return None
    if not isinstance(usage, dict):
        return None
    out: dict[str, Any] = {k: usage[k] for k in USAGE_COUNTS if _count(usage.get(k))}
    latency = usage.get("latency_seconds")
    if isinstance(latency, int | float) and not isinstance(latency, bool) and 0 <= latency <= MAX_USAGE_SECONDS:
        out["latency_seconds"] = float(latency)
    return out


def _count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_USAGE_COUNT


def decode_failure(message: str | None) -> tuple[str, bool]:
    """A failed container's message for people, and whether the worker marked the failure final."""
    text = (message or "").strip()
    if text.startswith(_ENVELOPE_PREFIX):
        try:
            envelope = _loads(text)
        except ValueError:  # cut, or JSON the status can't hold: the text is still for people
            return text, False
        if isinstance(envelope, dict) and "error" in envelope:
            return str(envelope["error"]), envelope.get("final") is True
    return text, False


def message_budget(pod_spec: dict[str, Any] | None) -> int:
    """How many bytes of one container's termination message the kubelet keeps in this pod."""
    spec = pod_spec or {}
    n = sum(len(spec.get(k) or []) for k in ("containers", "initContainers", "ephemeralContainers"))
    return min(MAX_RESULT_BYTES, MAX_POD_MESSAGE_BYTES // max(n, 1))


def decode_result(message: str | None, budget: int | None = None) -> Any:
    """The result a finished container reported. Text that is not JSON is kept as a string.

    Raises ResultTruncated for a cut envelope, and for text of exactly the kubelet's `budget` that
    is not JSON (a bare value cut at the limit). `budget=None`: nothing could have cut it. Raises
    ResultInvalid for an envelope of an invalid version and for JSON the status can't hold (a bare
    value with NaN or Infinity is not JSON: text).
    """
    if message is None:
        return None
    text = message.strip()
    if not text:
        return None
    try:
        decoded = _loads(text)
    except (json.JSONDecodeError, _NotJson) as e:  # (a bare value with NaN or Infinity is not JSON either)
        if text.startswith(_ENVELOPE_PREFIX):
            if isinstance(e, _NotJson):
                raise
            raise ResultTruncated(_truncated(message, budget)) from None
        if budget is not None and len(message.encode()) >= budget:
            raise ResultTruncated(_truncated(message, budget)) from None
        return text
    if isinstance(decoded, dict) and ENVELOPE_KEY in decoded:
        return _open_envelope(decoded, message, budget)
    return decoded


def _open_envelope(envelope: dict[str, Any], message: str, budget: int | None) -> Any:
    version = envelope[ENVELOPE_KEY]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultInvalid(
            f"the result envelope has an invalid version {str(version)[:40]!r}: write {ENVELOPE_VERSION}"
        )
    if "value" not in envelope and "usage" in envelope:
        # encode_usage's envelope: the result itself went to the store, and did not arrive.
        raise ResultTruncated(
            "the worker wrote its result to $APWA_OUTPUT_PATH and reported only its usage here, "
            "but no stored result arrived (is spec.store set, and did the store sidecar run?)"
        )
    value = envelope.get("value")
    length = envelope.get("len")
    if isinstance(length, int) and len(_compact(value).encode()) != length:
        raise ResultTruncated(_truncated(message, budget))
    return value


def _truncated(message: str, budget: int | None) -> str:
    size = len(message.encode())
    limit = f"the kubelet keeps {budget} bytes per container in this pod" if budget else "it is incomplete"
    return (
        f"the result message ({size} bytes) was cut: {limit} "
        f"({MAX_RESULT_BYTES} per container, {MAX_POD_MESSAGE_BYTES} per pod shared by all containers). "
        "Keep results small (apwa.worker.emit refuses what does not fit) or store them elsewhere."
    )


class StoreFailed(ValueError):
    """The store sidecar could not upload the result (its message says why)."""


def encode_stored(size: int, sha256: str) -> bytes:
    return _compact({ENVELOPE_KEY: ENVELOPE_VERSION, "stored": {"size": size, "sha256": sha256}}).encode()


def decode_stored(message: str | None) -> dict[str, Any] | None:
    """What a store sidecar's message says it uploaded: {"size", "sha256"}; None when it uploaded
    nothing (the result, if any, is inline in the main container's message). Raises StoreFailed
    for a failure envelope (or a message that is not an envelope)."""
    text = (message or "").strip()
    if not text:
        return None
    try:
        envelope = _loads(text)
    except ResultInvalid as e:
        raise StoreFailed(f"the store sidecar's message can't be read: {e}") from None
    except ValueError:
        raise StoreFailed(f"the store sidecar's message is not an envelope: {text[-300:]}") from None
    if not isinstance(envelope, dict) or ENVELOPE_KEY not in envelope:
        raise StoreFailed(f"the store sidecar's message is not an envelope: {text[-300:]}")
    if "error" in envelope:
        raise StoreFailed(str(envelope["error"]))
    stored = envelope.get("stored")
    if stored is None:
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("size"), int):
        raise StoreFailed(f"the store sidecar's message has no valid 'stored' entry: {text[-300:]}")
    return {"size": stored["size"], **({"sha256": stored["sha256"]} if isinstance(stored.get("sha256"), str) else {})}


def decode_value(data: bytes) -> Any:
    """A stored result's value: JSON when it parses, otherwise the text (as termination messages)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), or JSON too deep or too long to read
        return data.decode("utf-8", errors="replace")
