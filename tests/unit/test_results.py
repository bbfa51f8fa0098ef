import json

import pytest
from apwa import worker
from apwa.results import MAX_RESULT_BYTES, Aggregate, ResultTooLarge, SubtaskOutcome, decode_result, encode_result
from apwa.status import build


def test_encode_decode_roundtrip():
    assert decode_result(encode_result({"a": [1, 2]}).decode()) == {"a": [1, 2]}
    assert decode_result("plain text\n") == "plain text"
    assert decode_result("") is None and decode_result(None) is None


def test_oversize_is_an_error_not_a_cut():
    encode_result("x" * (MAX_RESULT_BYTES - 2))
    with pytest.raises(ResultTooLarge, match="at most 4096"):
        encode_result("x" * MAX_RESULT_BYTES)


def test_worker_emit(tmp_path, monkeypatch):
    out = tmp_path / "result"
    monkeypatch.setenv("APWA_RESULT_PATH", str(out))
    monkeypatch.setenv("APWA_ITEM", '{"x": 1}')
    assert worker.item() == {"x": 1}
    worker.emit({"ok": True})
    assert json.loads(out.read_text()) == {"ok": True}
    out.unlink()
    with pytest.raises(ResultTooLarge):
        worker.emit("y" * 5000)
    assert not out.exists()


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
