import json

import pytest
from apwa import worker
from apwa.results import (
    FINAL_EXIT_CODE,
    MAX_RESULT_BYTES,
    Aggregate,
    ResultTooLarge,
    ResultTruncated,
    SubtaskOutcome,
    decode_failure,
    decode_result,
    encode_failure,
    encode_result,
    message_budget,
)
from apwa.status import build


def test_encode_decode_roundtrip():
    assert decode_result(encode_result({"a": [1, 2]}).decode()) == {"a": [1, 2]}
    assert decode_result("plain text\n") == "plain text"
    assert decode_result("") is None and decode_result(None) is None


def test_oversize_is_an_error_not_a_cut():
    overhead = len(encode_result("x" * 4000)) - 4000  # the envelope of a string of 4 digits' length
    fits = "x" * (MAX_RESULT_BYTES - overhead)
    assert len(encode_result(fits)) == MAX_RESULT_BYTES
    assert decode_result(encode_result(fits).decode(), MAX_RESULT_BYTES) == fits
    with pytest.raises(ResultTooLarge, match="at most 4096"):
        encode_result(fits + "x")


def test_worker_emit(tmp_path, monkeypatch):
    out = tmp_path / "result"
    monkeypatch.setenv("APWA_RESULT_PATH", str(out))
    monkeypatch.setenv("APWA_ITEM", '{"x": 1}')
    assert worker.item() == {"x": 1}
    worker.emit({"ok": True})
    assert json.loads(out.read_text()) == {"apwa": 1, "len": 11, "value": {"ok": True}}
    assert decode_result(out.read_text(), 4096) == {"ok": True}
    out.unlink()
    with pytest.raises(ResultTooLarge):
        worker.emit("y" * 5000)
    assert not out.exists()


def test_worker_emit_honours_the_pods_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("APWA_RESULT_PATH", str(tmp_path / "result"))
    monkeypatch.setenv("APWA_RESULT_LIMIT", "3072")  # four containers share 12 KiB
    with pytest.raises(ResultTooLarge, match="at most 3072"):
        worker.emit("y" * 3100)


def _cut_head(text: str, keep: int) -> str:  # what the pod-wide limit does: keeps the first bytes
    return text.encode()[:keep].decode(errors="ignore")


def _cut_tail(text: str, keep: int) -> str:  # what the per-container limit does: keeps the last bytes
    return text.encode()[-keep:].decode(errors="ignore")


_BIG = encode_result({"rows": ["r" * 40] * 90}).decode()  # about 3.8 KiB


@pytest.mark.parametrize(
    ("message", "budget", "want"),
    [
        pytest.param(None, 4096, None, id="no-message"),
        pytest.param("  \n", 4096, None, id="blank"),
        pytest.param("42", 4096, 42, id="bare-number"),
        pytest.param('{"a": [1, 2]}', 4096, {"a": [1, 2]}, id="bare-object"),
        pytest.param("hello world", 4096, "hello world", id="bare-text-kept-as-string"),
        pytest.param(encode_result([1, "x"]).decode(), 4096, [1, "x"], id="envelope"),
        pytest.param(encode_result(None).decode(), 4096, None, id="envelope-of-null"),
        pytest.param(_BIG, 4096, json.loads(_BIG)["value"], id="envelope-near-the-limit"),
        pytest.param('{"apwa": 1, "value": 3, "future": {"k": 1}}', 4096, 3, id="unknown-keys-ignored"),
        pytest.param("x" * 4095, 4096, "x" * 4095, id="bare-text-under-the-budget"),
        pytest.param("x" * 5000, None, "x" * 5000, id="no-budget-nothing-cut"),
    ],
)
def test_decode_result(message, budget, want):
    assert decode_result(message, budget) == want


@pytest.mark.parametrize(
    ("message", "budget"),
    [
        pytest.param(_cut_head(_BIG, 3072), 3072, id="envelope-cut-by-the-pod-limit"),
        pytest.param(_cut_tail(_BIG, 2048), 2048, id="envelope-cut-by-the-container-limit"),
        pytest.param('{"apwa":1,"len":5,"value":"ab"}', 4096, id="length-disagrees"),
        pytest.param(_cut_tail('"' + "x" * 5000 + '"', 4096), 4096, id="bare-string-cut-at-the-budget"),
        pytest.param("x" * 3072, 3072, id="bare-text-exactly-at-a-smaller-budget"),
    ],
)
def test_cut_messages_are_detected(message, budget):
    with pytest.raises(ResultTruncated, match="was cut"):
        decode_result(message, budget)


@pytest.mark.parametrize(
    ("containers", "init", "budget"),
    [
        pytest.param(1, 0, 4096, id="one-container"),
        pytest.param(2, 1, 4096, id="three-share-12k"),
        pytest.param(3, 1, 3072, id="four-share-12k"),
        pytest.param(6, 0, 2048, id="six-share-12k"),
    ],
)
def test_message_budget(containers, init, budget):
    spec = {"containers": [{}] * containers, "initContainers": [{}] * init}
    assert message_budget(spec) == budget


def test_failure_messages_keep_the_tail():
    agg = Aggregate(total=1)
    agg.record(SubtaskOutcome(0, False, reason="Error", message="noise\n" * 200 + "ValueError: the cause"))
    (failure,) = agg.failures()
    assert failure["message"].endswith("ValueError: the cause") and len(failure["message"]) <= 512


def test_aggregate_is_idempotent_and_ordered():
    agg = Aggregate(total=5)
    for i in (3, 0, 4):
        assert agg.record(SubtaskOutcome(i, True, result=i * 10))
    assert not agg.record(SubtaskOutcome(3, False, reason="Dup"))  # replayed event
    agg.record(SubtaskOutcome(1, False, reason="Error", message="boom", exit_code=2))
    assert (agg.succeeded, agg.failed, agg.finished) == (3, 1, 4)
    assert [r["index"] for r in agg.results()] == [0, 3, 4]
    assert agg.reduce_input()["failed"] == [1]
    assert agg.failures() == [{"index": 1, "reason": "Error", "message": "boom", "exitCode": 2}]


def test_status_is_bounded_at_scale():
    n = 100_000
    agg = Aggregate(total=n)
    for i in range(n):
        agg.record(SubtaskOutcome(i, i % 3 != 0, result={"i": i, "text": "r" * 50}, message="m" * 2000))
    status = build(
        phase="Failed",
        reason="TooManyFailures",
        message="x" * 5000,
        generation=1,
        total=n,
        active=0,
        agg=agg,
        result=agg.summary(),
    )
    size = len(json.dumps(status))
    assert size < 32 * 1024, size  # etcd's limit is 1.5 MiB; the status stays a few KiB
    assert len(status["failedSubtasks"]) == 20 and status["counts"]["failed"] == 33334
    assert status["result"]["omitted"] > 0


def test_conditions_kstatus():
    s = build(phase="Running", reason="Running", message="3/10", generation=2, total=10, active=3, agg=None)
    cond = {c["type"]: c for c in s["conditions"]}
    assert cond["Reconciling"]["status"] == "True" and cond["Ready"]["status"] == "False"
    assert all(c["observedGeneration"] == 2 for c in s["conditions"])
    done = build(
        phase="Succeeded",
        reason="Done",
        message="ok",
        generation=2,
        total=10,
        active=0,
        agg=None,
        previous=s,
        now="2030-01-01T00:00:00Z",
    )
    cond2 = {c["type"]: c for c in done["conditions"]}
    assert cond2["Complete"]["status"] == "True" and cond2["Ready"]["status"] == "True"
    assert cond2["Stalled"]["lastTransitionTime"] == cond["Stalled"]["lastTransitionTime"]  # unchanged
    assert cond2["Ready"]["lastTransitionTime"] == "2030-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("message", "want"),
    [
        pytest.param('{"apwa":1,"error":"bad input","final":true}', ("bad input", True), id="final"),
        pytest.param('{"apwa":1,"error":"model timed out","final":false}', ("model timed out", False), id="retryable"),
        pytest.param('{"apwa":1,"error":"x"}', ("x", False), id="final-missing"),
        pytest.param("Traceback ...\nValueError: boom", ("Traceback ...\nValueError: boom", False), id="log-tail"),
        pytest.param('{"apwa":1,"error":"cut', ('{"apwa":1,"error":"cut', False), id="cut-envelope-kept-as-text"),
        pytest.param(None, ("", False), id="no-message"),
    ],
)
def test_decode_failure(message, want):
    assert decode_failure(message) == want


def test_encode_failure_fits_and_keeps_the_end():
    data = encode_failure("noise " * 2000 + "the cause", final=True, limit=1024)
    assert len(data) <= 1024
    text, final = decode_failure(data.decode())
    assert final and text.endswith("the cause") and text.startswith("...")


@pytest.mark.parametrize("final", [True, False], ids=["final", "retryable"])
def test_worker_fail(tmp_path, monkeypatch, final):
    out = tmp_path / "result"
    monkeypatch.setenv("APWA_RESULT_PATH", str(out))
    with pytest.raises(SystemExit) as exit_info:
        worker.fail("not a CSV file", final=final)
    assert exit_info.value.code == (FINAL_EXIT_CODE if final else 1)
    assert decode_failure(out.read_text()) == ("not a CSV file", final)
