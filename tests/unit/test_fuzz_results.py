"""Fuzzing the result protocol (issue 16, part 5c): termination messages as the kubelet delivers
them, through the decoders (apwa.results.protocol) and through what the operator does with a pod
(PodResult.from_body, outcome_of).

Messages: envelopes of generated values at and around the kubelet's 4096 bytes, cut as the kubelet
cuts (the last 4096 bytes of the file, then the first 12 KiB / containers bytes), arbitrary bytes
decoded as the API server delivers invalid UTF-8 (replacement characters), text that is not JSON,
JSON cut mid-token, numbers past int64 and float64, deep nesting. The properties: no exception but
the documented ones, never a success recorded for a cut envelope, a whole envelope's value back
intact (or refused as ResultInvalid when Kubernetes' JSON can't carry it).
"""

from __future__ import annotations

import json
from typing import Any

import fuzz_strategies as fz
import pytest
from apwa.api.vocabulary import Reason
from apwa.common import kjson
from apwa.core.children import JobState, PodResult, outcome_of
from apwa.results.protocol import (
    MAX_POD_MESSAGE_BYTES,
    MAX_RESULT_BYTES,
    MAX_USAGE_COUNT,
    ResultInvalid,
    ResultTooLarge,
    ResultTruncated,
    StoreFailed,
    decode_failure,
    decode_result,
    decode_stored,
    decode_usage,
    encode_result,
    message_budget,
)
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

FAST = 400
SLOW = 5_000
BOUNDARIES = (MAX_RESULT_BYTES - 1, MAX_RESULT_BYTES, MAX_RESULT_BYTES + 1)


def delivered(data: bytes) -> str:
    """What a client reads from the API server for these bytes: invalid UTF-8 replaced."""
    return data.decode("utf-8", errors="replace")


def kubelet_cut(data: bytes, containers: int) -> bytes:
    """The kubelet keeps the last 4096 bytes of the file, then the first 12 KiB / containers."""
    tail = data[-MAX_RESULT_BYTES:]
    return tail[: MAX_POD_MESSAGE_BYTES // containers]


def envelope_of_size(size: int, char: str) -> tuple[str, bytes]:
    """A string value whose envelope is exactly `size` bytes (or the nearest above, for wide chars)."""
    width = len(json.dumps(char, ensure_ascii=False).encode()) - 2
    n = max(0, (size - len(encode_result("", limit=10**9)) - 8) // width)  # 8: room for the len digits
    while len(encode_result(char * n, limit=10**9)) < size:
        n += 1
    return char * n, encode_result(char * n, limit=10**9)


def pod(message: str, containers: int = 1, phase: str = "Succeeded") -> dict[str, Any]:
    names = [f"c{i}" for i in range(containers)]
    return {
        "metadata": {"name": "p", "uid": "u"},
        "spec": {"containers": [{"name": n} for n in names]},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"name": names[0], "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}}
            ],
        },
    }


def check_decoders(message: str, budget: int | None) -> None:
    try:
        decode_result(message, budget)
    except (ResultTruncated, ResultInvalid):
        pass
    text, final = decode_failure(message)
    assert isinstance(text, str) and isinstance(final, bool)
    usage = decode_usage(message)
    assert usage is None or all(0 <= v <= MAX_USAGE_COUNT for k, v in usage.items() if k != "latency_seconds")
    try:
        decode_stored(message)
    except StoreFailed:
        pass


def recorded(message: str, containers: int = 1) -> Any:
    result = PodResult.from_body(pod(message, containers))
    assert result is not None
    return outcome_of(0, JobState("j", finished=True, succeeded=True), result)


texts = (
    st.text(max_size=300)
    | st.binary(max_size=300).map(delivered)
    | st.sampled_from(fz.NASTY_STRINGS)
    | st.builds(lambda v, n: json.dumps(v)[:n], fz.json_values(kube=False), st.integers(0, 200))
    | st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 3000))
    | st.builds(lambda n, d: '{"apwa":1,"len":1,"value":' + d * n, st.integers(1, 3000), st.sampled_from("[{"))
    | st.sampled_from(["NaN", "-Infinity", "1e999", "-1e400", "9" * 4096, '{"apwa":1e999}', '{"apwa":[1]}'])
    | st.sampled_from(['{"apwa":true,"value":1}', '{"apwa":1,"len":-1,"value":1}', '{"apwa":1,"stored":[]}'])
    | st.builds(lambda n: '{"apwa":1,"usage":{"prompt_tokens":' + "9" * n + "}}", st.integers(1, 400))
)


@example("[" * 2048 + "]" * 2048, 4096)  # RecursionError from json.loads in every decoder
@example('{"apwa":0,"value":1}', 4096)  # ValueError (invalid version) escaped outcome_of
@example("1e999", None)  # recorded as a success with inf: the status patch is refused (400)
@example("9" * 400, 4096)  # beyond float64: the API server answers 400 to the status patch
@example('{"apwa":1,"usage":{"prompt_tokens":' + "9" * 30 + "}}", 4096)  # usage past int64
@given(message=texts, budget=st.sampled_from([None, 2048, 4096]))
@settings(max_examples=FAST)
def test_decoders_raise_only_what_they_document(message: str, budget: int | None) -> None:
    check_decoders(message, budget)
    outcome = recorded(message)
    assert outcome.succeeded or outcome.reason in (Reason.RESULT_TRUNCATED, Reason.RESULT_INVALID)
    if outcome.succeeded:
        # What is recorded goes into a ConfigMap and the status: it must be JSON Kubernetes carries.
        kjson.loads(json.dumps(outcome.result, allow_nan=False))


@pytest.mark.slow
@given(message=texts, budget=st.sampled_from([None, 2048, 4096]))
@settings(max_examples=SLOW)
def test_thousands_of_messages_raise_only_what_is_documented(message: str, budget: int | None) -> None:
    check_decoders(message, budget)
    recorded(message)


cut_cases = st.tuples(
    st.sampled_from(BOUNDARIES) | st.integers(2000, 13_000),
    st.sampled_from(["x", "é", "€", "😀", '"', "\\"]),
    st.integers(1, 6),
)


def check_cut(size: int, char: str, containers: int) -> None:
    value, full = envelope_of_size(size, char)
    kept = kubelet_cut(full, containers)
    message = delivered(kept)
    budget = message_budget(pod(message, containers)["spec"])
    check_decoders(message, budget)
    outcome = recorded(message, containers)
    if kept != full:
        assert not outcome.succeeded, f"a cut envelope ({len(full)} -> {len(kept)} bytes) was recorded as a success"
        assert outcome.reason == Reason.RESULT_TRUNCATED
    else:
        assert outcome.succeeded and outcome.result == value


@example((MAX_RESULT_BYTES + 1, "x", 1))  # the last 4096 bytes: the envelope's head is gone
@example((MAX_RESULT_BYTES + 1, "😀", 1))  # ... and the cut falls inside a 4-byte character
@example((MAX_RESULT_BYTES, "€", 4))  # a pod of four containers keeps 3072 bytes of each
@given(case=cut_cases)
@settings(max_examples=FAST)
def test_a_cut_envelope_is_never_a_success(case: tuple[int, str, int]) -> None:
    check_cut(*case)


@pytest.mark.slow
@given(case=cut_cases)
@settings(max_examples=SLOW)
def test_thousands_of_cut_envelopes_are_never_a_success(case: tuple[int, str, int]) -> None:
    check_cut(*case)


@given(value=fz.json_values(kube=False), containers=st.integers(1, 3))
@settings(max_examples=FAST)
def test_a_whole_envelope_is_its_value_or_refused_as_invalid(value: Any, containers: int) -> None:
    """Whole envelopes of any JSON value (past float64 too): the value back, or ResultInvalid."""
    try:
        data = encode_result(value)
    except ResultTooLarge:  # the worker's side refuses it (nothing written): not this property
        assume(False)
    outcome = recorded(delivered(data), containers)
    if outcome.succeeded:
        assert outcome.result == value
    else:
        assert outcome.reason in (Reason.RESULT_INVALID, Reason.RESULT_TRUNCATED), outcome


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        pytest.param("[1, 2.5, -3e10]", None, id="ordinary"),
        pytest.param(str(2**63), None, id="past-int64-within-float64"),
        pytest.param("1e308", None, id="float64-max-order"),
        pytest.param("1e309", "beyond float64", id="float-overflow"),
        pytest.param("9" * 400, "beyond float64", id="400-digits"),
        pytest.param("9" * 5000, "can't be read", id="past-python-digit-limit"),
        pytest.param("[NaN]", "not a JSON number", id="nan"),
        pytest.param("-Infinity", "not a JSON number", id="infinity"),
        pytest.param("[" * 100 + "]" * 100, None, id="depth-100"),
        pytest.param("[" * 101 + "]" * 101, "deeper than 100", id="depth-101"),
        pytest.param("[" * 5000 + "]" * 5000, "deeper than 100", id="past-recursion-limit"),
    ],
)
def test_kjson_takes_what_kubernetes_carries(text: str, refused: str | None) -> None:
    if refused is None:
        assert kjson.loads(text) == json.loads(text)
    else:
        with pytest.raises(kjson.UnfitJson, match=refused):
            kjson.loads(text)
