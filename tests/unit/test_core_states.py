"""The core outside a running step: restart seeding and watch events (ChildIndex), stalls,
finished workloads, the Planning phase, spec reading; and the vocabulary the core speaks."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from apwa.api import models
from apwa.api.vocabulary import EventType, Phase, Reason
from apwa.common.times import format_iso
from apwa.core import (
    ChildIndex,
    CreateJobs,
    DeleteWorkload,
    PatchStatus,
    PostEvent,
    RecordOutcomes,
    Stalled,
    WriteStatus,
    decide,
    finished,
    planning_status,
    read_spec,
    stalled,
    without_times,
)
from apwa.core.decide import FINISHED_RECHECK_SECONDS
from apwa.status import build
from core_builders import NOW, all_ok, bad, ok, pod_ok, running, spec, world

UID = "uid-w"


def job_body(
    index: int | None, *, role: str = "subtask", done: str | None = None, uid: str | None = None
) -> dict[str, Any]:
    labels = {"apwa.dev/role": role}
    if index is not None:
        labels["apwa.dev/index"] = str(index)
    conditions = [{"type": done, "status": "True", "lastTransitionTime": "2027-01-15T08:00:00Z"}] if done else []
    name = f"w-{index}" if index is not None else "w-reduce"
    return {
        "metadata": {"name": name, "labels": labels, "uid": uid or f"uid-{name}"},
        "spec": {},
        "status": {"conditions": conditions},
    }


def pod_body(index: int | None, phase: str, message: str = "", role: str = "subtask") -> dict[str, Any]:
    labels = {"apwa.dev/role": role}
    if index is not None:
        labels["apwa.dev/index"] = str(index)
    term = {"exitCode": 0 if phase == "Succeeded" else 1, "message": message}
    return {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "main"}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "main", "state": {"terminated": term}}]},
    }


# ---- watch events -------------------------------------------------------------------------------
JOB_EVENTS = [
    # name, starting jobs, cursor, recorded, event, body, expected indices, expected cursor, changed, finished
    ("added", {}, 0, (), "ADDED", job_body(0), [0], 0, True, False),
    ("finished", {0: running(0)}, 1, (), "MODIFIED", job_body(0, done="Complete"), [0], 1, True, True),
    ("finished-again-not-new", {}, 1, (), "MODIFIED", job_body(0, done="Failed"), [0], 1, True, True),
    ("deleted-moves-cursor-back", {3: running(3)}, 8, (), "DELETED", job_body(3), [], 3, True, False),
    ("recorded-dropped", {2: running(2)}, 5, (2,), "MODIFIED", job_body(2, done="Complete"), [], 5, False, False),
    ("recorded-deleted-no-recreate", {}, 5, (2,), "DELETED", job_body(2), [], 5, False, False),
    ("other-role-ignored", {}, 0, (), "ADDED", job_body(None, role="results"), [], 0, False, False),
]


@pytest.mark.parametrize(
    ("jobs", "cursor", "recorded", "event", "body", "indices", "new_cursor", "changed", "just_finished"),
    [pytest.param(*r[1:], id=r[0]) for r in JOB_EVENTS],
)
def test_job_event(
    jobs: dict[int, Any],
    cursor: int,
    recorded: tuple[int, ...],
    event: str,
    body: dict[str, Any],
    indices: list[int],
    new_cursor: int,
    changed: bool,
    just_finished: bool,
) -> None:
    index = ChildIndex(jobs=dict(jobs), cursor=cursor)
    effect = index.job_event(event, body, recorded)
    assert sorted(index.jobs) == indices
    assert index.cursor == new_cursor
    assert effect.changed is changed
    assert (effect.finished is not None) is just_finished


def test_a_job_seen_finished_twice_reports_the_finish_once() -> None:
    index = ChildIndex()
    assert index.job_event("MODIFIED", job_body(0, done="Complete"), ()).finished is not None
    assert index.job_event("MODIFIED", job_body(0, done="Complete"), ()).finished is None


REDUCE_EVENTS = [
    ("reduce-added", "ADDED", job_body(None, role="reduce"), False),
    ("reduce-finished", "MODIFIED", job_body(None, role="reduce", done="Complete"), True),
]


@pytest.mark.parametrize(("event", "body", "is_finished"), [pytest.param(*r[1:], id=r[0]) for r in REDUCE_EVENTS])
def test_reduce_job_event(event: str, body: dict[str, Any], is_finished: bool) -> None:
    index = ChildIndex()
    index.job_event(event, body, ())
    assert index.reduce_job is not None and index.reduce_job.finished is is_finished
    index.job_event("DELETED", body, ())
    assert index.reduce_job is None


POD_EVENTS = [
    # name, existing pod phase, event, new pod, recorded, expected phase kept (None: no pod), changed
    ("first-result", None, "MODIFIED", pod_body(0, "Succeeded", '"r"'), (), "Succeeded", True),
    ("failure-recorded", None, "MODIFIED", pod_body(0, "Failed", "x"), (), "Failed", True),
    ("retry-success-replaces-failure", "Failed", "MODIFIED", pod_body(0, "Succeeded"), (), "Succeeded", True),
    ("failure-doesnt-hide-success", "Succeeded", "MODIFIED", pod_body(0, "Failed"), (), "Succeeded", True),
    ("running-ignored", None, "MODIFIED", pod_body(0, "Running"), (), None, False),
    ("deleted-keeps-last", "Failed", "DELETED", pod_body(0, "Failed"), (), "Failed", False),
    ("recorded-ignored", None, "MODIFIED", pod_body(0, "Succeeded"), (0,), None, False),
]


@pytest.mark.parametrize(
    ("old", "event", "body", "recorded", "kept", "changed"), [pytest.param(*r[1:], id=r[0]) for r in POD_EVENTS]
)
def test_pod_event(
    old: str | None, event: str, body: dict[str, Any], recorded: tuple[int, ...], kept: str | None, changed: bool
) -> None:
    index = ChildIndex()
    if old:
        index.pod_event("MODIFIED", pod_body(0, old), ())
    assert index.pod_event(event, body, recorded) is changed
    assert (index.pods[0].phase if 0 in index.pods else None) == kept


def test_reduce_pod_success_is_kept() -> None:
    index = ChildIndex()
    index.pod_event("MODIFIED", pod_body(None, "Succeeded", '"r"', role="reduce"), ())
    index.pod_event("MODIFIED", pod_body(None, "Failed", role="reduce"), ())
    assert index.reduce_pod is not None and index.reduce_pod.succeeded


# ---- the result finalizer: which pods are held, and which are released at once ------------------
FIN = "apwa.dev/result"


def held_pod(
    index: int | None,
    phase: str,
    name: str = "p",
    *,
    finalizers: tuple[str, ...] = (FIN, "batch.kubernetes.io/job-tracking"),
    deleting: bool = False,
) -> dict[str, Any]:
    body = pod_body(index, phase, role="subtask" if index is not None else "reduce")
    body["metadata"].update(name=name, finalizers=list(finalizers))
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2027-01-15T08:00:00Z"
    return body


HOLDS = [
    # name, event, pod, recorded (stored outcomes), released now, held afterwards ({index: names}), reduce held
    ("running-held", "ADDED", held_pod(0, "Running"), (), False, {0: {"p"}}, set()),
    ("pending-held", "ADDED", held_pod(0, "Pending"), (), False, {0: {"p"}}, set()),
    ("finished-unrecorded-held", "MODIFIED", held_pod(0, "Succeeded"), (), False, {0: {"p"}}, set()),
    (
        "finished-being-deleted-stays-held",
        "MODIFIED",
        held_pod(0, "Succeeded", deleting=True),
        (),
        False,
        {0: {"p"}},
        set(),
    ),
    ("failed-being-deleted-stays-held", "MODIFIED", held_pod(0, "Failed", deleting=True), (), False, {0: {"p"}}, set()),
    ("recorded-released", "MODIFIED", held_pod(0, "Succeeded"), (0,), True, {}, set()),
    ("recorded-late-pod-released", "ADDED", held_pod(0, "Running"), (0,), True, {}, set()),
    ("running-being-deleted-released", "MODIFIED", held_pod(0, "Running", deleting=True), (), True, {}, set()),
    ("pending-being-deleted-released", "MODIFIED", held_pod(0, "Pending", deleting=True), (), True, {}, set()),
    ("without-finalizer-ignored", "ADDED", held_pod(0, "Succeeded", finalizers=()), (), False, {}, set()),
    ("others-finalizer-only-ignored", "ADDED", held_pod(0, "Running", finalizers=("x/y",)), (0,), False, {}, set()),
    ("deleted-forgotten", "DELETED", held_pod(0, "Succeeded"), (), False, {}, set()),
    ("reduce-held", "MODIFIED", held_pod(None, "Succeeded", "r"), (), False, {}, {"r"}),
    ("reduce-being-deleted-unfinished", "MODIFIED", held_pod(None, "Running", "r", deleting=True), (), True, {}, set()),
]


@pytest.mark.parametrize(
    ("event", "body", "recorded", "released", "held", "reduce_held"), [pytest.param(*r[1:], id=r[0]) for r in HOLDS]
)
def test_hold(
    event: str,
    body: dict[str, Any],
    recorded: tuple[int, ...],
    released: bool,
    held: dict[int, set[str]],
    reduce_held: set[str],
) -> None:
    index = ChildIndex()
    assert index.hold(event, body, recorded) is released
    assert (index.held, index.reduce_held) == (held, reduce_held)


def test_every_pod_of_every_attempt_is_released_with_the_outcome() -> None:
    index = ChildIndex()
    for name, phase in (("w-0-a", "Failed"), ("w-0-b", "Succeeded"), ("w-0-r1-c", "Running")):
        index.hold("MODIFIED", held_pod(0, phase, name), ())
    index.hold("MODIFIED", held_pod(1, "Running", "w-1-a"), ())
    assert index.let_go(0) == {"w-0-a", "w-0-b", "w-0-r1-c"}
    assert index.let_go(0) == set()
    assert index.held == {1: {"w-1-a"}}


def test_a_pod_that_lost_the_finalizer_is_forgotten() -> None:
    index = ChildIndex()
    index.hold("MODIFIED", held_pod(0, "Succeeded"), ())
    index.hold("MODIFIED", held_pod(0, "Succeeded", finalizers=()), ())
    assert index.held == {}


def test_the_end_lets_go_of_everything_and_clear_keeps_it() -> None:
    index = ChildIndex()
    index.hold("MODIFIED", held_pod(0, "Succeeded", "a"), ())
    index.hold("MODIFIED", held_pod(3, "Running", "b"), ())
    index.hold("MODIFIED", held_pod(None, "Succeeded", "r"), ())
    index.clear()
    assert index.let_go_all() == {"a", "b", "r"}
    assert (index.held, index.reduce_held, index.let_go_all()) == ({}, set(), set())


def test_release_of_jobs_does_not_touch_held_pods() -> None:
    """ChildIndex.release forgets Jobs and results; the executor lets go of the pods (let_go)."""
    index = ChildIndex()
    index.hold("MODIFIED", held_pod(0, "Succeeded"), ())
    index.release(0)
    assert index.held == {0: {"p"}}


RELIST = [
    ("all-listed", {0: running(0), 1: running(1)}, {"uid-0", "uid-1"}, [0, 1], 5, False),
    ("one-gone", {0: running(0), 1: running(1)}, {"uid-0"}, [0], 1, True),
    ("none-listed", {0: running(0), 3: running(3)}, set(), [], 0, True),
]


@pytest.mark.parametrize(("jobs", "uids", "left", "cursor", "gone"), [pytest.param(*r[1:], id=r[0]) for r in RELIST])
def test_relist_forgets_vanished_jobs(
    jobs: dict[int, Any], uids: set[str], left: list[int], cursor: int, gone: bool
) -> None:
    index = ChildIndex(jobs=dict(jobs), cursor=5)
    index.jobs = {i: type(j)(name=j.name, uid=f"uid-{i}") for i, j in jobs.items()}
    assert index.forget_jobs_not_in(uids) is gone
    assert sorted(index.jobs) == left and index.cursor == cursor


# ---- restart seeding ----------------------------------------------------------------------------
SEEDING = [
    # name, stored outcomes, listed jobs, listed pods, expected: created, recorded this step
    ("fresh-start", [], [], [], (0, 1, 2), []),
    ("outcomes-stored-jobs-gone", all_ok(3), [], [], (3, 4, 5), []),
    ("jobs-running", [], [job_body(0), job_body(1)], [], (2,), []),
    (
        "job-finished-while-down",
        [],
        [job_body(0, done="Complete")],
        [pod_body(0, "Succeeded", '"late"')],
        (1, 2, 3),
        [(0, True)],
    ),
    (
        "stored-job-not-collected-again",
        [ok(0)],
        [job_body(0, done="Complete")],
        [pod_body(0, "Succeeded")],
        (1, 2, 3),
        [],
    ),
    (
        "failure-while-down",
        [],
        [job_body(0, done="Failed")],
        [pod_body(0, "Failed", "oops")],
        (),
        [(0, False)],
    ),
    ("gap-in-outcomes-recreated", [ok(0), ok(2)], [], [], (1, 3, 4), []),
    ("mix-window-full-after-one", [ok(0)], [job_body(1), job_body(3)], [pod_body(1, "Running")], (2,), []),
]


@pytest.mark.parametrize(
    ("stored", "jobs", "pods", "created", "collected"), [pytest.param(*r[1:], id=r[0]) for r in SEEDING]
)
def test_restart_seeding(
    stored: list[Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    created: tuple[int, ...],
    collected: list[Any],
) -> None:
    w = world(spec(parallelism=3), outcomes=stored)
    for body in jobs:
        w.children.seed_job(body, w.outcomes.outcomes)
    for body in pods:
        w.children.seed_pod(body, w.outcomes.outcomes)
    step = decide(w, NOW)
    assert tuple(i for a in step.of(CreateJobs) for i in a.indices) == created
    assert [(o.index, o.succeeded) for a in step.of(RecordOutcomes) for o in a.outcomes] == collected


def test_seeding_keeps_what_the_watch_delivered_first() -> None:
    index = ChildIndex()
    index.job_event("MODIFIED", job_body(0, done="Complete"), ())
    index.seed_job(job_body(0), ())  # an older listing: the Job looked unfinished
    assert index.jobs[0].finished
    index.pod_event("MODIFIED", pod_body(0, "Succeeded", '"a"'), ())
    index.seed_pod(pod_body(0, "Failed"), ())
    assert index.pods[0].succeeded


def test_seeding_the_reduce_job() -> None:
    index = ChildIndex()
    index.seed_job(job_body(None, role="reduce", done="Complete"), ())
    index.seed_pod(pod_body(None, "Succeeded", '{"total": 1}', role="reduce"), ())
    w = world(spec(reduce=True), outcomes=all_ok(10))
    w.children.reduce_job, w.children.reduce_pod = index.reduce_job, index.reduce_pod
    status = decide(w, NOW).of(WriteStatus)[0].status
    assert (status["phase"], status["result"]) == (Phase.SUCCEEDED, {"total": 1})


# ---- stalls -------------------------------------------------------------------------------------
STALLS = [
    # name, previous phase, expected phase
    ("pending-stays-pending", None, Phase.PENDING),
    ("planning-becomes-pending", "Planning", Phase.PENDING),
    ("running-kept", "Running", Phase.RUNNING),
    ("suspended-kept", "Suspended", Phase.SUSPENDED),
    ("reducing-kept", "Reducing", Phase.REDUCING),
    ("failed-becomes-pending", "Failed", Phase.PENDING),
]


@pytest.mark.parametrize(("prev_phase", "phase"), [pytest.param(*r[1:], id=r[0]) for r in STALLS])
def test_stall_phase(prev_phase: str | None, phase: Phase) -> None:
    e = Stalled(Reason.JOB_REJECTED, "the API server rejected a subtask Job: bad", retry=60)
    previous = {"phase": prev_phase, "startTime": "2020-01-01T00:00:00Z"} if prev_phase else {}
    step, _ = stalled(
        e, previous=previous, generation=2, total=4, active=1, outcomes=None, written=None, backoff=5, now=NOW
    )
    status = step.of(WriteStatus)[0].status
    assert status["phase"] == phase
    flags = {c["type"]: c["status"] for c in status["conditions"]}
    assert flags["Stalled"] == "True" and flags["Reconciling"] == "False"
    assert status["message"] == e.message
    assert status.get("startTime") == previous.get("startTime")


BACKOFF = [
    # name, current backoff, the stall's retry, expected wake, expected next backoff
    ("first", 5.0, 30.0, 5.0, 10.0),
    ("doubling", 10.0, 30.0, 10.0, 20.0),
    ("capped-by-retry", 20.0, 30.0, 20.0, 30.0),
    ("at-cap", 30.0, 30.0, 30.0, 30.0),
    ("short-retry", 5.0, 2.0, 2.0, 2.0),
    ("long-retry", 40.0, 300.0, 40.0, 80.0),
]


@pytest.mark.parametrize(("backoff", "retry", "wake", "after"), [pytest.param(*r[1:], id=r[0]) for r in BACKOFF])
def test_stall_backoff(backoff: float, retry: float, wake: float, after: float) -> None:
    e = Stalled(Reason.FORBIDDEN, "quota", retry=retry)
    step, nxt = stalled(
        e, previous={}, generation=None, total=0, active=0, outcomes=None, written=None, backoff=backoff, now=NOW
    )
    assert (step.wake_in, nxt) == (wake, after)


def test_stall_reported_once_while_unchanged() -> None:
    e = Stalled(Reason.PLANNING_FAILED, "ConfigMap 'x' not found")
    args: dict[str, Any] = {"previous": {}, "generation": 1, "total": 0, "active": 0, "outcomes": None}
    first, _ = stalled(e, written=None, backoff=5, now=NOW, **args)
    assert [type(a) for a in first.actions] == [WriteStatus, PostEvent]
    (event,) = first.of(PostEvent)
    assert (event.type, event.reason) == (EventType.WARNING, Reason.PLANNING_FAILED)
    written = without_times(first.of(WriteStatus)[0].status)
    again, _ = stalled(e, written=written, backoff=10, now=NOW + 30, **args)
    assert again.actions == ()
    other, _ = stalled(Stalled(Reason.PLANNING_FAILED, "other"), written=written, backoff=10, now=NOW, **args)
    assert other.of(PostEvent)


def test_stall_keeps_counts() -> None:
    from core_builders import aggregate

    e = Stalled(Reason.FORBIDDEN, "quota", retry=15)
    agg = aggregate(10, [ok(0), bad(1)])
    step, _ = stalled(e, previous={}, generation=1, total=10, active=2, outcomes=agg, written=None, backoff=5, now=NOW)
    counts = step.of(WriteStatus)[0].status["counts"]
    assert counts == {"total": 10, "pending": 6, "active": 2, "succeeded": 1, "failed": 1, "awaitingAdmission": 0}


SPECS = [
    ("no-templates", {"decomposition": {"range": {"end": 3}}}, "spec.templates"),
    (
        "two-strategies",
        {"decomposition": {"range": {"end": 3}, "shards": {"count": 2}}, "templates": {}},
        "exactly one",
    ),
    ("bad-parallelism", {"decomposition": {"range": {"end": 3}}, "parallelism": 0, "templates": {}}, "parallelism"),
    ("empty", None, "spec.decomposition"),
]


@pytest.mark.parametrize(("raw", "mentions"), [pytest.param(*r[1:], id=r[0]) for r in SPECS])
def test_invalid_spec_stalls(raw: dict[str, Any] | None, mentions: str) -> None:
    with pytest.raises(Stalled) as info:
        read_spec(raw)
    assert info.value.reason == Reason.INVALID_SPEC and info.value.retry == 300
    assert mentions in info.value.message


# ---- finished workloads -------------------------------------------------------------------------
DONE = "2020-01-01T00:00:00Z"
FINISHED_ROWS = [
    # name, spec ttl, status, generation, expected actions, wake
    ("no-ttl", None, {"completionTime": DONE, "observedGeneration": 1}, 1, [], FINISHED_RECHECK_SECONDS),
    ("ttl-pending", 100, {"completionTime": format_iso(NOW - 40), "observedGeneration": 1}, 1, [], 60.0),
    ("ttl-passed", 10, {"completionTime": format_iso(NOW - 40), "observedGeneration": 1}, 1, [DeleteWorkload], None),
    ("ttl-zero", 0, {"completionTime": format_iso(NOW), "observedGeneration": 1}, 1, [DeleteWorkload], None),
    ("edited-after-end", None, {"completionTime": DONE, "observedGeneration": 1}, 2, [PatchStatus], None),
    (
        "edited-and-expired",
        1,
        {"completionTime": DONE, "observedGeneration": 1},
        2,
        [PatchStatus, DeleteWorkload],
        None,
    ),
    ("no-generation", None, {"completionTime": DONE}, None, [], FINISHED_RECHECK_SECONDS),
]


@pytest.mark.parametrize(
    ("ttl", "status", "generation", "kinds", "wake"), [pytest.param(*r[1:], id=r[0]) for r in FINISHED_ROWS]
)
def test_finished(
    ttl: int | None, status: dict[str, Any], generation: int | None, kinds: list[type], wake: Any
) -> None:
    step = finished(spec(ttl=ttl), {"phase": "Succeeded", **status}, generation, NOW)
    assert [type(a) for a in step.actions] == kinds
    if wake is not None:
        assert step.wake_in == pytest.approx(wake)


def test_finished_acknowledges_the_generation_in_every_condition() -> None:
    status = {"phase": "Succeeded", "completionTime": DONE, "observedGeneration": 1}
    status["conditions"] = [{"type": "Ready", "status": "True", "observedGeneration": 1}]
    (patch,) = finished(spec(), status, 3, NOW).of(PatchStatus)
    assert patch.patch == {
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 3}],
    }


# ---- the Planning phase -------------------------------------------------------------------------
def test_planning_status() -> None:
    status = planning_status({}, "OpenAI planner (model 'm' at http://x/v1)", 1, NOW)
    assert status is not None
    assert status["phase"] == Phase.PLANNING
    assert status["message"] == "asking the OpenAI planner (model 'm' at http://x/v1) for subtasks"
    assert status["startTime"] == format_iso(NOW)


def test_planning_keeps_a_stall_visible() -> None:
    stalled_before = build(
        phase="Pending", reason="PlanningFailed", message="x", generation=1, total=0, active=0, agg=None, stalled=True
    )
    assert planning_status(stalled_before, "HTTP planner (http://x)", 1, NOW) is None


# ---- the vocabulary -----------------------------------------------------------------------------
def test_crd_phases_are_the_enums() -> None:
    assert typing.get_args(models.Phase) == tuple(p.value for p in Phase)


def test_status_is_plain_strings() -> None:
    """YAML and JSON writers must see str, not the enums (yaml.safe_dump refuses subclasses)."""
    import yaml

    status = decide(world(outcomes=all_ok(10)), NOW).of(WriteStatus)[0].status
    assert type(status["phase"]) is str
    assert all(type(c["reason"]) is str and type(c["type"]) is str for c in status["conditions"])
    yaml.safe_dump(status)


def test_running_step_uses_only_the_time_handed_in() -> None:
    a = decide(world(jobs={0: running(0)}, pods={0: pod_ok()}, cursor=1), NOW).of(WriteStatus)[0].status
    b = decide(world(jobs={0: running(0)}, pods={0: pod_ok()}, cursor=1), NOW + 3600).of(WriteStatus)[0].status
    assert a["startTime"] == format_iso(NOW) and b["startTime"] == format_iso(NOW + 3600)
