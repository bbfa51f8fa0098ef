"""Pure parts of the controller: reading child states, outcomes, the result store's encoding."""

import base64
import dataclasses
import gzip
import json

import pytest
from apwa.controller.store import COMPRESS_ABOVE, config_map_body, decode_outcome, encode_outcome, read_payload
from apwa.core import outcome_of
from apwa.core.children import JobState, PodResult
from apwa.rendering import Owner
from apwa.results import SubtaskOutcome, encode_failure


def job(conditions=(), suspend=False):
    return {
        "metadata": {"name": "w-1", "uid": "u"},
        "spec": {"suspend": suspend},
        "status": {"conditions": list(conditions)},
    }


def test_job_state():
    assert not JobState.from_body(job()).finished
    done = JobState.from_body(
        job([{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    )
    assert done.finished and done.succeeded and done.finished_at == 1767225600.0
    failed = JobState.from_body(
        job(
            [
                {"type": "FailureTarget", "status": "True"},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"},
            ]
        )
    )
    assert failed.finished and not failed.succeeded and failed.reason == "BackoffLimitExceeded"
    assert not JobState.from_body(job([{"type": "Complete", "status": "False"}])).finished
    assert JobState.from_body(job(suspend=True)).suspended


QUEUE_LABEL = {"kueue.x-k8s.io/queue-name": "team-a"}
HELD = {"apwa.dev/held": "true"}


@pytest.mark.parametrize(
    ("labels", "annotations", "suspend", "queued", "held", "awaiting"),
    [
        pytest.param({}, {}, True, False, False, False, id="suspended-by-someone-not-kueue"),
        pytest.param(QUEUE_LABEL, {}, True, True, False, True, id="kueue-waiting-for-quota"),
        pytest.param(QUEUE_LABEL, {}, False, True, False, False, id="kueue-admitted"),
        pytest.param(QUEUE_LABEL, HELD, True, True, True, False, id="kueue-held-by-spec-suspend"),
        pytest.param({}, HELD, True, False, True, False, id="held-by-spec-suspend"),
        pytest.param({}, {"apwa.dev/held": "false"}, True, False, False, False, id="only-true-holds"),
    ],
)
def test_job_state_kueue_and_hold(labels, annotations, suspend, queued, held, awaiting):
    body = job(suspend=suspend)
    body["metadata"] |= {"labels": labels, "annotations": annotations}
    state = JobState.from_body(body)
    assert (state.queued, state.held, state.awaiting_admission) == (queued, held, awaiting)


def pod(phase, statuses):
    return {
        "spec": {"containers": [{"name": "main"}, {"name": "side"}]},
        "status": {"phase": phase, "containerStatuses": statuses},
    }


def test_pod_result_reads_the_first_container():
    statuses = [
        {"name": "side", "state": {"terminated": {"exitCode": 9, "message": "not me"}}},
        {"name": "main", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": '{"a": 1}'}}},
    ]
    r = PodResult.from_body(pod("Succeeded", statuses))
    assert r is not None and r.message == '{"a": 1}' and r.exit_code == 0
    assert PodResult.from_body(pod("Running", statuses)) is None


def test_a_failed_init_container_explains_a_pod_whose_main_container_never_ran():
    envelope = encode_failure("reading in/gone.txt: not found in bucket 'b'", final=False).decode()
    body = pod("Failed", [{"name": "main", "state": {"waiting": {"reason": "PodInitializing"}}}])
    body["status"]["initContainerStatuses"] = [
        {"name": "apwa-fetch", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": envelope}}},
        {"name": "apwa-store", "state": {"waiting": {}}},
    ]
    r = PodResult.from_body(body)
    assert r is not None and (r.exit_code, r.reason) == (1, "Error")
    failed = JobState("w-1", finished=True, succeeded=False, reason="BackoffLimitExceeded", message="backoff")
    assert outcome_of(1, failed, r).message == "reading in/gone.txt: not found in bucket 'b'"


def test_outcome_of():
    ok = JobState("w-1", finished=True, succeeded=True)
    assert outcome_of(1, ok, PodResult("Succeeded", 0, "", '{"x": 2}')).result == {"x": 2}
    bad = JobState(
        "w-1",
        finished=True,
        succeeded=False,
        reason="BackoffLimitExceeded",
        message="Job has reached the specified backoff limit",
    )
    assert JobState.from_body({"metadata": {"name": "w-1"}, "status": {"failed": 4}}).failed_pods == 4
    bad.failed_pods = 4
    assert outcome_of(1, bad, PodResult("Failed", 4, "Error", "trace\n")).failed_pods == 4
    bad.failed_pods = 0
    o = outcome_of(1, bad, PodResult("Failed", 4, "Error", "trace\n"))
    assert (o.succeeded, o.reason, o.exit_code, o.message) == (False, "BackoffLimitExceeded", 4, "trace")
    assert outcome_of(1, bad, None).message == "Job has reached the specified backoff limit"


def test_store_roundtrip_and_compression():
    for o in (
        SubtaskOutcome(3, True, result=[1, "a"]),
        SubtaskOutcome(4, False, reason="Error", message="m", exit_code=2, failed_pods=3),
    ):
        back = decode_outcome(o.index, json.loads(json.dumps(encode_outcome(o))))
        assert back == dataclasses.replace(o, job=None)  # the Job's name is not stored
    owner = Owner("w", "ns", "uid")
    small = config_map_body(owner, "w-results-0", b'{"x": 1}', {})
    assert small["data"]["results.json"] == '{"x": 1}' and small["metadata"]["ownerReferences"][0]["uid"] == "uid"
    big_payload = json.dumps({"outcomes": {str(i): {"ok": True, "result": "r" * 100} for i in range(3000)}}).encode()
    assert len(big_payload) > COMPRESS_ABOVE
    big = config_map_body(owner, "w-results-1", big_payload, {})
    assert "data" not in big and len(base64.b64decode(big["binaryData"]["results.json"])) < len(big_payload) / 10
    assert read_payload(big) == big_payload and read_payload(small) == b'{"x": 1}'
    assert gzip.decompress(base64.b64decode(big["binaryData"]["results.json"])) == big_payload


def _done_job() -> JobState:
    return JobState.from_body(job([{"type": "Complete", "status": "True"}]))


def _pod(message: str, containers: int = 1) -> PodResult:
    body = {
        "spec": {"containers": [{"name": f"c{i}"} for i in range(containers)]},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "c0", "state": {"terminated": {"exitCode": 0, "message": message}}}],
        },
    }
    result = PodResult.from_body(body)
    assert result is not None
    return result


@pytest.mark.parametrize(
    ("message", "containers", "succeeded", "reason"),
    [
        pytest.param('{"apwa":1,"len":2,"value":42}', 1, True, "", id="whole-envelope"),
        pytest.param('{"apwa":1,"len":2,"val', 1, False, "ResultTruncated", id="envelope-cut"),
        pytest.param("z" * 4096, 1, False, "ResultTruncated", id="bare-text-at-4096"),
        pytest.param("z" * 3072, 4, False, "ResultTruncated", id="bare-text-at-a-four-container-pods-limit"),
        pytest.param("z" * 3072, 1, True, "", id="bare-text-under-the-limit"),
    ],
)
def test_a_cut_result_is_a_failure(message: str, containers: int, succeeded: bool, reason: str) -> None:
    outcome = outcome_of(3, _done_job(), _pod(message, containers))
    assert (outcome.succeeded, outcome.reason) == (succeeded, reason)
    if not succeeded:
        assert "was cut" in outcome.message


LIMIT = "BackoffLimitExceeded"


@pytest.mark.parametrize(
    ("message", "job_reason", "reason", "text"),
    [
        pytest.param('{"apwa":1,"error":"bad","final":true}', "PodFailurePolicy", "Final", "bad", id="final"),
        pytest.param('{"apwa":1,"error":"flaky","final":false}', LIMIT, LIMIT, "flaky", id="not-final"),
        pytest.param("ValueError: boom", LIMIT, LIMIT, "ValueError: boom", id="log-tail"),
    ],
)
def test_failure_outcomes(message: str, job_reason: str, reason: str, text: str) -> None:
    failed_job = JobState("w-1", finished=True, reason=job_reason)
    pod = PodResult("Failed", 86, "Error", message)
    outcome = outcome_of(1, failed_job, pod)
    assert (outcome.succeeded, outcome.reason, outcome.message) == (False, reason, text)
