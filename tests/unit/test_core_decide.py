"""The core's decisions for a running workload, as tables: one named row per case.

Each row builds a World with the helpers of core_builders, calls `decide` with a fixed time,
and compares one aspect of the answer (phase, actions, counts) with what the row expects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from apwa.api.vocabulary import EventType, Phase, Reason
from apwa.common.times import format_iso
from apwa.core import (
    MAX_CREATING,
    POD_GRACE_SECONDS,
    RESYNC_SECONDS,
    CreateJobs,
    HoldQueuedJobs,
    PostEvent,
    RecordOutcomes,
    ReleaseJobs,
    StartReduce,
    SuspendJobs,
    World,
    WriteStatus,
    decide,
)
from apwa.results import encode_result
from core_builders import (
    LONG_AGO,
    NOW,
    all_ok,
    bad,
    done,
    failed,
    ok,
    pod_failed,
    pod_ok,
    queued,
    running,
    spec,
    world,
)


def status_of(w: World) -> dict[str, Any]:
    step = decide(w, NOW)
    writes = step.of(WriteStatus)
    assert len(writes) == 1, "every step writes the status exactly once"
    return writes[0].status


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


# ---- phase transitions ------------------------------------------------------------------------
PHASES = [
    pytest.param(
        world(), Phase.RUNNING, Reason.SUBTASKS_RUNNING, "0/10 subtasks succeeded, 0 failed, 0 active", id="new-runs"
    ),
    pytest.param(
        world(jobs={0: running(0)}), Phase.RUNNING, Reason.SUBTASKS_RUNNING, "0 failed, 1 active", id="one-active"
    ),
    pytest.param(
        world(outcomes=all_ok(4)), Phase.RUNNING, Reason.SUBTASKS_RUNNING, "4/10 subtasks succeeded", id="some-done"
    ),
    pytest.param(
        world(jobs={0: done(0)}, pods={0: pod_ok()}), Phase.RUNNING, Reason.SUBTASKS_RUNNING, "1/10", id="collects-now"
    ),
    pytest.param(world(spec(suspend=True)), Phase.SUSPENDED, Reason.SUSPENDED, "suspended: 0/10", id="suspended"),
    pytest.param(
        world(spec(suspend=True), outcomes=all_ok(3)),
        Phase.SUSPENDED,
        Reason.SUSPENDED,
        "set spec.suspend=false to resume",
        id="suspended-midway",
    ),
    pytest.param(
        world(outcomes=all_ok(10)),
        Phase.SUCCEEDED,
        Reason.ALL_SUBTASKS_FINISHED,
        "10/10 subtasks succeeded",
        id="all-ok",
    ),
    pytest.param(
        world(spec(max_failed=2), outcomes=[*all_ok(8), bad(8), bad(9)]),
        Phase.SUCCEEDED,
        Reason.ALL_SUBTASKS_FINISHED,
        "8/10 subtasks succeeded, 2 failed (within spec.failurePolicy)",
        id="ok-within-budget",
    ),
    pytest.param(
        world(spec(suspend=True), outcomes=all_ok(10)),
        Phase.SUCCEEDED,
        Reason.ALL_SUBTASKS_FINISHED,
        "10/10",
        id="suspend-after-all-finished-still-succeeds",
    ),
    pytest.param(
        world(outcomes=[bad(0)]),
        Phase.FAILED,
        Reason.TOO_MANY_FAILURES,
        "1 subtasks failed, more than the 0 allowed by spec.failurePolicy",
        id="first-failure-fails",
    ),
    pytest.param(
        world(outcomes=[bad(0)], jobs={1: running(1), 2: running(2)}),
        Phase.FAILED,
        Reason.TOO_MANY_FAILURES,
        "; no new subtasks start, 2 still finishing",
        id="failed-while-others-finish",
    ),
    pytest.param(
        world(spec(suspend=True), outcomes=[bad(0)]),
        Phase.FAILED,
        Reason.TOO_MANY_FAILURES,
        "more than the 0 allowed",
        id="failing-beats-suspended",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10)), Phase.REDUCING, Reason.REDUCING, "; reducing", id="reduce"
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=running(99)),
        Phase.REDUCING,
        Reason.REDUCING,
        "; reducing",
        id="reduce-running",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=done(99, at=NOW - 1)),
        Phase.REDUCING,
        Reason.REDUCING,
        "collecting the reduce result",
        id="reduce-done-pod-unseen",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=done(99)),
        Phase.FAILED,
        Reason.RESULT_LOST,
        "the reduce step's Job w-99 succeeded but its pod was gone",
        id="reduce-done-pod-gone-after-the-grace",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=done(99), reduce_pod=pod_failed()),
        Phase.FAILED,
        Reason.RESULT_LOST,
        "the reduce step's Job w-99 succeeded but its pod was gone",
        id="reduce-done-only-a-failed-pod-seen",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=done(99), reduce_pod=pod_ok('{"sum": 3}')),
        Phase.SUCCEEDED,
        Reason.REDUCED,
        "10/10 subtasks succeeded",
        id="reduced",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=failed(99), reduce_pod=pod_failed(2, "bad input\n")),
        Phase.FAILED,
        Reason.REDUCE_FAILED,
        "the reduce step failed: bad input",
        id="reduce-failed-pod-message",
    ),
    pytest.param(
        world(
            spec(reduce=True),
            outcomes=all_ok(10),
            reduce_job=failed(99, reason="PodFailurePolicy"),
            reduce_pod=pod_failed(86, '{"apwa":1,"error":"no results to merge","final":true}'),
        ),
        Phase.FAILED,
        Reason.REDUCE_FAILED,
        "the reduce step failed: no results to merge",
        id="reduce-failed-with-a-failure-envelope",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=failed(99, reason="DeadlineExceeded", message="late")),
        Phase.FAILED,
        Reason.REDUCE_FAILED,
        "the reduce step failed: late",
        id="reduce-failed-job-message",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=[bad(0)]),
        Phase.FAILED,
        Reason.TOO_MANY_FAILURES,
        "more than the 0 allowed",
        id="no-reduce-after-too-many-failures",
    ),
    pytest.param(
        world(outcomes=all_ok(10), previous={"phase": "Failed", "message": "kept", "conditions": []}),
        Phase.FAILED,
        "",
        "kept",
        id="decided-before-stays",
    ),
]


@pytest.mark.parametrize(("w", "phase", "reason", "message"), PHASES)
def test_phase(w: World, phase: Phase, reason: str, message: str) -> None:
    status = status_of(w)
    assert status["phase"] == phase
    assert condition(status, "Ready")["reason"] == reason
    assert message in status["message"]


# Which kstatus conditions hold in each phase (Ready, Reconciling, Stalled, Complete, Failed).
CONDITIONS = [
    pytest.param(world(), "FTFFF", id="running"),
    pytest.param(world(spec(suspend=True)), "FFFFF", id="suspended"),
    pytest.param(world(spec(reduce=True), outcomes=all_ok(10)), "FTFFF", id="reducing"),
    pytest.param(world(outcomes=all_ok(10)), "TFFTF", id="succeeded"),
    pytest.param(world(outcomes=[bad(0)]), "FFTFT", id="failed"),
    pytest.param(world(outcomes=[bad(0)], jobs={1: running(1)}), "FFTFT", id="failed-still-finishing"),
]


@pytest.mark.parametrize(("w", "flags"), CONDITIONS)
def test_conditions(w: World, flags: str) -> None:
    status = status_of(w)
    got = "".join(
        "T" if condition(status, t)["status"] == "True" else "F"
        for t in ("Ready", "Reconciling", "Stalled", "Complete", "Failed")
    )
    assert got == flags


# ---- completion: time stamps, the final write, the finishing event -----------------------------
COMPLETION = [
    pytest.param(world(), None, False, id="running-not-final"),
    pytest.param(world(outcomes=all_ok(10)), format_iso(NOW), True, id="succeeded-now"),
    pytest.param(world(outcomes=[bad(0)]), format_iso(NOW), True, id="failed-now"),
    pytest.param(world(outcomes=[bad(0)], jobs={3: running(3)}), None, False, id="failed-waits-for-active"),
    pytest.param(
        world(outcomes=[bad(0)], previous={"completionTime": "2020-01-01T00:00:00Z"}),
        "2020-01-01T00:00:00Z",
        True,
        id="failed-keeps-its-time",
    ),
    pytest.param(world(spec(reduce=True), outcomes=all_ok(10)), None, False, id="reducing-not-final"),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=done(99), reduce_pod=pod_ok()),
        format_iso(NOW),
        True,
        id="reduced-final",
    ),
]


@pytest.mark.parametrize(("w", "completion", "final"), COMPLETION)
def test_completion(w: World, completion: str | None, final: bool) -> None:
    write = decide(w, NOW).of(WriteStatus)[0]
    assert write.status.get("completionTime") == completion
    assert write.final is final


FINISH_EVENTS = [
    pytest.param(world(outcomes=all_ok(10)), [(EventType.NORMAL, Reason.SUCCEEDED)], id="succeeded"),
    pytest.param(world(outcomes=[bad(0)]), [(EventType.WARNING, Reason.FAILED)], id="failed"),
    pytest.param(world(outcomes=[bad(0)], jobs={1: running(1)}), [], id="failing-not-yet"),
    pytest.param(
        world(outcomes=[bad(0)], previous={"phase": "Failed", "completionTime": "2020-01-01T00:00:00Z"}),
        [],
        id="already-reported",
    ),
    pytest.param(world(), [], id="running"),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10)), [(EventType.NORMAL, Reason.REDUCING)], id="reduce-start"
    ),
    pytest.param(world(spec(reduce=True), outcomes=all_ok(10), reduce_job=running(99)), [], id="reduce-started-before"),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=failed(99)),
        [(EventType.WARNING, Reason.FAILED)],
        id="reduce-failed",
    ),
]


@pytest.mark.parametrize(("w", "events"), FINISH_EVENTS)
def test_events(w: World, events: list[tuple[str, str]]) -> None:
    assert [(e.type, e.reason) for e in decide(w, NOW).of(PostEvent)] == events


# ---- failure budget edges -----------------------------------------------------------------------
def _budget_rows() -> list[Any]:
    rows = []
    policies: list[tuple[str, int | None, float | None]] = [
        ("default", None, None),
        ("max0", 0, None),
        ("max1", 1, None),
        ("max3", 3, None),
        ("ratio0", None, 0.0),
        ("ratio10pct", None, 0.1),
        ("ratio25pct", None, 0.25),
        ("ratio-all", None, 1.0),
        ("both-max-lower", 1, 0.5),
        ("both-ratio-lower", 5, 0.1),
    ]
    for total in (1, 4, 10, 20):
        for name, max_failed, ratio in policies:
            limits = [v for v in (max_failed, int(ratio * total) if ratio is not None else None) if v is not None]
            allowed = min(limits) if limits else 0
            for failures in sorted({0, allowed, allowed + 1}):
                if failures > total:
                    continue
                rows.append(
                    pytest.param(
                        total, max_failed, ratio, failures, failures > allowed, id=f"n{total}-{name}-{failures}failed"
                    )
                )
    return rows


@pytest.mark.parametrize(("total", "max_failed", "ratio", "failures", "fails"), _budget_rows())
def test_failure_budget(total: int, max_failed: int | None, ratio: float | None, failures: int, fails: bool) -> None:
    w = world(spec(total, max_failed=max_failed, ratio=ratio), outcomes=[bad(i) for i in range(failures)])
    step = decide(w, NOW)
    status = step.of(WriteStatus)[0].status
    assert (status["phase"] == Phase.FAILED) is fails
    if fails:
        assert not step.of(CreateJobs), "past the budget no new subtask starts"
    assert status["counts"]["failed"] == failures


BUDGET_WITH_NEW = [
    pytest.param({0: failed(0)}, {0: pod_failed()}, 0, True, id="new-failure-counts-this-step"),
    pytest.param({0: failed(0)}, {0: pod_failed()}, 1, False, id="new-failure-within-budget"),
    pytest.param({0: failed(0), 1: failed(1)}, {0: pod_failed(), 1: pod_failed()}, 1, True, id="two-new-one-allowed"),
    pytest.param({0: done(0)}, {0: pod_ok()}, 0, False, id="new-success-is-no-failure"),
    pytest.param({0: failed(0, at=NOW - 1)}, {}, 0, False, id="failure-waiting-for-its-pod-not-yet-counted"),
]


@pytest.mark.parametrize(("jobs", "pods", "max_failed", "fails"), BUDGET_WITH_NEW)
def test_failure_budget_counts_this_steps_outcomes(
    jobs: dict[int, Any], pods: dict[int, Any], max_failed: int, fails: bool
) -> None:
    status = status_of(world(spec(max_failed=max_failed), jobs=jobs, pods=pods))
    assert (status["phase"] == Phase.FAILED) is fails


# ---- the creation window: parallelism, in-flight creations, cursor ------------------------------
WINDOW = [
    # name, spec kwargs, world kwargs, expected created indices, expected cursor
    ("fresh-window", {"parallelism": 3}, {}, (0, 1, 2), 3),
    ("window-full", {"parallelism": 2}, {"jobs": {0: running(0), 1: running(1)}, "cursor": 2}, (), 2),
    ("one-slot", {"parallelism": 3}, {"jobs": {0: running(0), 1: running(1)}, "cursor": 2}, (2,), 3),
    ("in-flight-count", {"parallelism": 3}, {"creating": (0, 1), "cursor": 2}, (2,), 3),
    ("in-flight-skipped", {"parallelism": 3}, {"creating": (1,), "cursor": 0}, (0, 2), 3),
    ("finished-not-active", {"parallelism": 2}, {"jobs": {0: done(0, at=NOW)}, "cursor": 1}, (1, 2), 3),
    ("recorded-skipped", {"parallelism": 3}, {"outcomes": [ok(0), ok(2)], "cursor": 0}, (1, 3, 4), 5),
    ("existing-skipped", {"parallelism": 4}, {"jobs": {1: running(1)}, "cursor": 0}, (0, 2, 3), 4),
    ("cursor-resumes", {"parallelism": 2}, {"outcomes": all_ok(5), "cursor": 5}, (5, 6), 7),
    (
        "lost-job-recreated",
        {"parallelism": 3},
        {"outcomes": [ok(0), ok(2)], "jobs": {3: running(3)}, "cursor": 1},
        (1, 4),
        5,
    ),
    ("tail", {"parallelism": 5}, {"outcomes": all_ok(8), "cursor": 8}, (8, 9), 10),
    ("end-no-room-left", {"parallelism": 5}, {"outcomes": all_ok(10), "cursor": 10}, (), 10),
    ("raise-parallelism", {"parallelism": 6}, {"jobs": {i: running(i) for i in range(3)}, "cursor": 3}, (3, 4, 5), 6),
    (
        "lower-parallelism-kills-nothing",
        {"parallelism": 1},
        {"jobs": {i: running(i) for i in range(3)}, "cursor": 3},
        (),
        3,
    ),
    ("parallelism-1", {"parallelism": 1}, {}, (0,), 1),
    ("parallelism-above-total", {"parallelism": 50}, {}, tuple(range(10)), 10),
    ("suspended-creates-nothing", {"suspend": True}, {}, (), 0),
    ("failing-creates-nothing", {}, {"outcomes": [bad(0)], "cursor": 1}, (), 1),
    ("creating-overfills", {"parallelism": 2}, {"creating": (0, 1, 2), "cursor": 3}, (), 3),
]


@pytest.mark.parametrize(
    ("spec_kw", "world_kw", "created", "cursor"), [pytest.param(*row[1:], id=row[0]) for row in WINDOW]
)
def test_window(spec_kw: dict[str, Any], world_kw: dict[str, Any], created: tuple[int, ...], cursor: int) -> None:
    step = decide(world(spec(**spec_kw), **world_kw), NOW)
    creates = step.of(CreateJobs)
    assert tuple(i for a in creates for i in a.indices) == created
    assert [a.resume_at for a in creates] == ([cursor] if created else [])


def _sweep_rows() -> list[Any]:
    """Every parallelism x active count: created = min(room, what is left)."""
    rows = []
    for parallelism in (1, 2, 3, 5, 8):
        for active in range(0, 9):
            if active > 10:
                continue
            room = max(parallelism - active, 0)
            rows.append(pytest.param(parallelism, active, min(room, 10 - active), id=f"p{parallelism}-a{active}"))
    return rows


@pytest.mark.parametrize(("parallelism", "active", "created"), _sweep_rows())
def test_window_sweep(parallelism: int, active: int, created: int) -> None:
    w = world(spec(parallelism=parallelism), jobs={i: running(i) for i in range(active)}, cursor=active)
    step = decide(w, NOW)
    indices = [i for a in step.of(CreateJobs) for i in a.indices]
    assert len(indices) == created
    assert indices == list(range(active, active + created)), "the lowest indices first, none twice"


def test_window_bounds_creations_in_flight() -> None:
    w = world(spec(1000, parallelism=1000))
    first = decide(w, NOW).of(CreateJobs)[0].indices
    assert len(first) == MAX_CREATING
    w = world(spec(1000, parallelism=1000), creating=tuple(range(MAX_CREATING)), cursor=MAX_CREATING)
    assert not decide(w, NOW).of(CreateJobs)


# ---- suspend / resume ----------------------------------------------------------------------------
# spec.suspend holds Jobs (SuspendJobs, or HoldQueuedJobs through Kueue's Workloads for Kueue's Jobs);
# resuming releases only what it held: a Job suspended by anything else, Kueue above all, is left be.
SUSPEND = [
    # name, spec.suspend, jobs, expected SuspendJobs indices, expected HoldQueuedJobs indices
    ("suspend-active", True, {0: running(0), 1: running(1)}, (0, 1), ()),
    ("already-held", True, {0: running(0, suspended=True, held=True)}, (), ()),
    ("held-but-unsuspended-by-someone", True, {0: running(0, held=True)}, (0,), ()),
    (
        "resume-held",
        False,
        {0: running(0, suspended=True, held=True), 1: running(1, suspended=True, held=True)},
        (0, 1),
        (),
    ),
    ("resume-mixed", False, {0: running(0, suspended=True, held=True), 1: running(1)}, (0,), ()),
    ("someone-elses-suspension-kept", False, {0: running(0, suspended=True)}, (), ()),
    ("finished-jobs-untouched", True, {0: done(0, at=NOW), 1: running(1)}, (1,), ()),
    ("nothing-active", True, {}, (), ()),
    ("running-unsuspended", False, {0: running(0)}, (), ()),
    ("kueue-waiting-never-unsuspended", False, {0: queued(0)}, (), ()),
    ("kueue-admitted-left-alone", False, {0: queued(0, admitted=True)}, (), ()),
    ("kueue-hold-waiting-and-admitted", True, {0: queued(0), 1: queued(1, admitted=True)}, (), (0, 1)),
    ("kueue-already-held", True, {0: queued(0, held=True)}, (), ()),
    ("kueue-held-admitted-meanwhile", True, {0: queued(0, admitted=True, held=True)}, (), ()),  # Kueue stops it
    ("kueue-resume", False, {0: queued(0, held=True), 1: queued(1)}, (), (0,)),
    ("mixed-hold", True, {0: running(0), 1: queued(1)}, (0,), (1,)),
]


@pytest.mark.parametrize(("suspend", "jobs", "own", "kueue"), [pytest.param(*row[1:], id=row[0]) for row in SUSPEND])
def test_suspend(suspend: bool, jobs: dict[int, Any], own: tuple[int, ...], kueue: tuple[int, ...]) -> None:
    step = decide(world(spec(suspend=suspend), jobs=jobs, cursor=len(jobs)), NOW)
    suspends, holds = step.of(SuspendJobs), step.of(HoldQueuedJobs)
    assert tuple(i for a in suspends for i, _ in a.jobs) == own
    assert tuple(i for a in holds for i, _ in a.jobs) == kueue
    assert all(a.suspend is suspend for a in suspends) and all(a.hold is suspend for a in holds)


def test_resume_then_creates_again() -> None:
    w = world(spec(parallelism=3), jobs={0: running(0, suspended=True, held=True)}, cursor=1)
    step = decide(w, NOW)
    assert step.of(SuspendJobs)[0].jobs == ((0, "w-0"),)
    assert step.of(CreateJobs)[0].indices == (1, 2)


# ---- Kueue: the window and the counts ------------------------------------------------------------
KUEUE_WINDOW = [
    # name, jobs (cursor after them), parallelism, expected new Jobs
    ("waiting-jobs-fill-the-window", {0: queued(0), 1: queued(1), 2: queued(2)}, 3, ()),
    ("admitted-and-waiting-together", {0: queued(0, admitted=True), 1: queued(1)}, 3, (2,)),
    ("no-kueue-same-rule", {0: running(0), 1: running(1)}, 3, (2,)),
]


@pytest.mark.parametrize(
    ("jobs", "parallelism", "created"), [pytest.param(*row[1:], id=row[0]) for row in KUEUE_WINDOW]
)
def test_window_counts_jobs_awaiting_admission(
    jobs: dict[int, Any], parallelism: int, created: tuple[int, ...]
) -> None:
    # parallelism bounds the Jobs (and Kueue Workloads) that exist, admitted or not: no flood of
    # queued objects, and other tenants' work created later still interleaves in the queue.
    step = decide(world(spec(parallelism=parallelism), jobs=jobs, cursor=len(jobs)), NOW)
    assert tuple(i for a in step.of(CreateJobs) for i in a.indices) == created


def test_waiting_for_admission_is_pending_not_active() -> None:
    jobs = {0: queued(0), 1: queued(1), 2: queued(2, admitted=True), 3: running(3)}
    status = status_of(world(spec(parallelism=4), jobs=jobs, cursor=4))
    assert status["counts"] == {
        "total": 10,
        "pending": 8,
        "active": 2,
        "succeeded": 0,
        "failed": 0,
        "awaitingAdmission": 2,
    }
    assert status["message"].endswith("2 active, 2 awaiting admission by Kueue")


def test_held_kueue_jobs_are_not_awaiting_admission() -> None:
    # Suspended by spec.suspend, not waiting for quota: the phase says Suspended, the count stays 0.
    status = status_of(world(spec(suspend=True), jobs={0: queued(0, held=True)}, cursor=1))
    assert status["phase"] == Phase.SUSPENDED and status["counts"]["awaitingAdmission"] == 0


# ---- collecting finished Jobs: pods, grace, deadlines --------------------------------------------
COLLECT = [
    # name, jobs, pods, expected outcome (index, succeeded, result/message) or None, wake before resync
    ("success-with-pod", {0: done(0)}, {0: pod_ok('{"n": 1}')}, (0, True, {"n": 1}), False),
    ("success-text-result", {0: done(0)}, {0: pod_ok("plain text")}, (0, True, "plain text"), False),
    ("success-empty-message", {0: done(0)}, {0: pod_ok("")}, (0, True, None), False),
    ("success-pod-late-waits", {0: done(0, at=NOW - 1)}, {}, None, True),
    ("success-failed-pod-seen-waits", {0: done(0, at=NOW - 1)}, {0: pod_failed()}, None, True),
    ("failure-with-pod", {0: failed(0)}, {0: pod_failed(3, "odd\n")}, (0, False, "odd"), False),
    (
        "failure-empty-pod-message",
        {0: failed(0, message="BackoffLimit")},
        {0: pod_failed(3, " ")},
        (0, False, "BackoffLimit"),
        False,
    ),
    ("failure-pod-late-waits", {0: failed(0, at=NOW - 2)}, {}, None, True),
    ("failure-pod-grace-over", {0: failed(0, message="gone")}, {}, (0, False, "gone"), False),
    (
        "deadline-needs-no-pod",
        {0: failed(0, reason="DeadlineExceeded", message="late", at=NOW)},
        {},
        (0, False, "late"),
        False,
    ),
    ("unfinished-not-collected", {0: running(0)}, {0: pod_ok()}, None, False),
    ("no-finish-time-waits", {0: failed(0, at=None)}, {}, None, True),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("jobs", "pods", "expected", "early"), [pytest.param(*row[1:], id=row[0]) for row in COLLECT])
def test_collect(jobs: dict[int, Any], pods: dict[int, Any], expected: Any, early: bool) -> None:
    step = decide(world(jobs=jobs, pods=pods, cursor=1), NOW)
    recorded = [o for a in step.of(RecordOutcomes) for o in a.outcomes]
    if expected is None:
        assert recorded == []
    else:
        index, succeeded, detail = expected
        (o,) = recorded
        assert (o.index, o.succeeded) == (index, succeeded)
        assert (o.result if succeeded else o.message) == detail
        assert o.job == "w-0"
    assert (step.wake_in < RESYNC_SECONDS) is early


# A succeeded Job whose pod is gone after the grace: failed, ResultLost, never a success without it.
RESULT_LOST = [
    ("success-pod-gone-after-the-grace", {0: done(0, at=NOW - POD_GRACE_SECONDS - 1)}, {}),
    ("success-pod-gone-long-ago", {0: done(0)}, {}),
    ("success-only-a-failed-pod-seen", {0: done(0)}, {0: pod_failed(1, "first try")}),
]


@pytest.mark.parametrize(("jobs", "pods"), [pytest.param(*row[1:], id=row[0]) for row in RESULT_LOST])
def test_a_succeeded_job_without_its_pod_is_a_lost_result(jobs: dict[int, Any], pods: dict[int, Any]) -> None:
    step = decide(world(jobs=jobs, pods=pods, cursor=1), NOW)
    (o,) = [o for a in step.of(RecordOutcomes) for o in a.outcomes]
    assert (o.index, o.succeeded, o.reason, o.result, o.exit_code) == (0, False, Reason.RESULT_LOST, None, None)
    assert o.message.startswith("Job w-0 succeeded but its pod was gone before the operator read")
    assert "run the subtask again" in o.message
    assert step.of(ReleaseJobs), "a lost result is recorded like any outcome, and its Job released"


# After an outage the Jobs' watch may be back before the pods': a Job that finished long ago and
# whose pod is not seen yet is not lost while the pods' view is incomplete, nor until the grace has
# passed since the pods were listed again.
PODS_VIEW = [
    ("pods-watch-down-waits", None, False),
    ("pods-listed-just-now-waits", NOW - 1, False),
    ("pods-listed-a-grace-ago-is-lost", NOW - POD_GRACE_SECONDS - 1, True),
]


@pytest.mark.parametrize(("pods_since", "lost"), [pytest.param(*row[1:], id=row[0]) for row in PODS_VIEW])
def test_a_missing_pod_counts_only_once_the_pods_are_listed(pods_since: float | None, lost: bool) -> None:
    w = dataclasses.replace(world(jobs={0: done(0, at=NOW - 600)}, cursor=1), pods_current_since=pods_since)
    step = decide(w, NOW)
    recorded = [o for a in step.of(RecordOutcomes) for o in a.outcomes]
    assert [o.reason for o in recorded] == ([Reason.RESULT_LOST] if lost else [])
    assert lost or step.wake_in <= POD_GRACE_SECONDS + 0.1


def test_grace_wake_is_when_the_grace_ends() -> None:
    step = decide(world(jobs={0: done(0, at=NOW - 10)}, cursor=1), NOW)
    assert step.wake_in == pytest.approx(POD_GRACE_SECONDS - 10 + 0.1)


def test_exit_code_and_reason_of_a_failure() -> None:
    step = decide(
        world(jobs={0: failed(0, reason="BackoffLimitExceeded")}, pods={0: pod_failed(7, "x")}, cursor=1), NOW
    )
    (o,) = step.of(RecordOutcomes)[0].outcomes
    assert (o.reason, o.exit_code) == ("BackoffLimitExceeded", 7)


def test_recorded_outcomes_are_not_collected_twice() -> None:
    step = decide(world(jobs={0: done(0)}, pods={0: pod_ok()}, outcomes=[ok(0)], cursor=1), NOW)
    assert not step.of(RecordOutcomes)


# ---- releasing stored outcomes: TTLs only after the store --------------------------------------
RELEASE = [
    ("new-outcome-released", {"job_ttl": 60}, {"jobs": {0: done(0)}, "pods": {0: pod_ok()}}, ((0, "w-0", 60),)),
    ("no-ttl", {}, {"jobs": {0: done(0)}, "pods": {0: pod_ok()}}, ((0, "w-0", None),)),
    ("recorded-before", {"job_ttl": 5}, {"jobs": {2: done(2)}, "outcomes": [ok(2)]}, ((2, "w-2", 5),)),
    ("waiting-not-released", {"job_ttl": 5}, {"jobs": {0: done(0, at=NOW)}}, ()),
    ("running-not-released", {"job_ttl": 5}, {"jobs": {0: running(0)}}, ()),
    ("ttl-zero", {"job_ttl": 0}, {"jobs": {0: failed(0)}, "pods": {0: pod_failed()}}, ((0, "w-0", 0),)),
]


@pytest.mark.parametrize(("spec_kw", "world_kw", "released"), [pytest.param(*r[1:], id=r[0]) for r in RELEASE])
def test_release(spec_kw: dict[str, Any], world_kw: dict[str, Any], released: tuple[Any, ...]) -> None:
    step = decide(world(spec(max_failed=5, **spec_kw), cursor=3, **world_kw), NOW)
    assert tuple(j for a in step.of(ReleaseJobs) for j in a.jobs) == released


def test_ttl_follows_each_subtasks_template() -> None:
    s = spec(4, templates={"fast": 10, "slow": None})
    jobs = {i: done(i) for i in range(4)}
    step = decide(world(s, jobs=jobs, pods={i: pod_ok() for i in range(4)}, cursor=4), NOW)
    assert [(i, ttl) for a in step.of(ReleaseJobs) for i, _, ttl in a.jobs] == [(0, 10), (1, 10), (2, None), (3, None)]


# ---- the order of actions -----------------------------------------------------------------------
ORDER = [
    pytest.param(
        world(spec(reduce=True), jobs={9: done(9)}, pods={9: pod_ok()}, outcomes=all_ok(9), cursor=10),
        [RecordOutcomes, ReleaseJobs, StartReduce, WriteStatus, PostEvent],
        id="last-outcome-starts-reduce",
    ),
    pytest.param(
        world(
            spec(suspend=False),
            jobs={0: done(0), 1: running(1, suspended=True, held=True)},
            pods={0: pod_ok()},
            cursor=2,
        ),
        [RecordOutcomes, ReleaseJobs, SuspendJobs, CreateJobs, WriteStatus],
        id="collect-release-resume-create",
    ),
    pytest.param(
        world(jobs={9: done(9)}, pods={9: pod_ok()}, outcomes=all_ok(9), cursor=10),
        [RecordOutcomes, ReleaseJobs, WriteStatus, PostEvent],
        id="last-outcome-finishes",
    ),
    pytest.param(world(spec(parallelism=1)), [CreateJobs, WriteStatus], id="create-then-status"),
]


@pytest.mark.parametrize(("w", "kinds"), ORDER)
def test_action_order(w: World, kinds: list[type]) -> None:
    assert [type(a) for a in decide(w, NOW).actions] == kinds


# ---- counts and bounded status ------------------------------------------------------------------
COUNTS = [
    pytest.param(
        world(),
        {"total": 10, "pending": 10, "active": 0, "succeeded": 0, "failed": 0, "awaitingAdmission": 0},
        id="fresh",
    ),
    pytest.param(
        world(jobs={0: running(0), 1: running(1)}, outcomes=[ok(2)], cursor=3),
        {"total": 10, "pending": 7, "active": 2, "succeeded": 1, "failed": 0, "awaitingAdmission": 0},
        id="mixed",
    ),
    pytest.param(
        world(spec(max_failed=3), jobs={0: failed(0)}, pods={0: pod_failed()}, outcomes=[ok(1)], cursor=2),
        {"total": 10, "pending": 8, "active": 0, "succeeded": 1, "failed": 1, "awaitingAdmission": 0},
        id="this-steps-failure-counted",
    ),
    pytest.param(
        world(outcomes=all_ok(10)),
        {"total": 10, "pending": 0, "active": 0, "succeeded": 10, "failed": 0, "awaitingAdmission": 0},
        id="done",
    ),
]


@pytest.mark.parametrize(("w", "counts"), COUNTS)
def test_counts(w: World, counts: dict[str, int]) -> None:
    status = status_of(w)
    assert status["counts"] == counts
    assert status["progress"] == f"{counts['succeeded']}/{counts['total']}"


OVERSIZED = [
    pytest.param(
        world(spec(50), outcomes=[ok(i, "x" * 200) for i in range(50)]),
        lambda s: s["result"]["omitted"] > 0 and len(s["result"]["first"]) < 50,
        id="summary-capped-when-results-are-large",
    ),
    pytest.param(
        world(spec(3), outcomes=[ok(i, {"n": i}) for i in range(3)]),
        lambda s: s["result"] == [{"index": i, "result": {"n": i}} for i in range(3)],
        id="summary-whole-when-small",
    ),
    pytest.param(
        world(spec(100, max_failed=100), outcomes=[bad(i) for i in range(60)], cursor=60),
        lambda s: len(s["failedSubtasks"]) == 20 and s["failedSubtasks"][0]["index"] == 0,
        id="failed-list-capped",
    ),
    pytest.param(
        world(spec(max_failed=5), outcomes=[bad(0, "e" * 5000)], cursor=1),
        lambda s: len(s["failedSubtasks"][0]["message"]) == 512,
        id="failure-message-capped",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=failed(99), reduce_pod=pod_failed(1, "m" * 5000)),
        lambda s: len(s["message"]) == 1024 and all(len(c["message"]) <= 1024 for c in s["conditions"]),
        id="status-message-capped",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=done(99), reduce_pod=pod_ok('{"cut": "abc')),
        lambda s: s["result"] == '{"cut": "abc',
        id="cut-result-kept-as-text",
    ),
    pytest.param(
        world(
            spec(reduce=True),
            outcomes=all_ok(10),
            reduce_job=done(99),
            reduce_pod=pod_ok('{"apwa":1,"len":9,"va', 4096),
        ),
        lambda s: s["phase"] == "Failed" and "was cut" in s["message"] and s.get("result") is None,
        id="cut-reduce-envelope-fails-the-workload",
    ),
    pytest.param(
        world(spec(reduce=True), outcomes=all_ok(10), reduce_job=done(99), reduce_pod=pod_ok("t" * 3072, 3072)),
        lambda s: s["phase"] == "Failed" and "3072 bytes per container" in s["message"],
        id="bare-reduce-text-at-the-pods-limit-fails-the-workload",
    ),
    pytest.param(
        world(
            spec(reduce=True),
            outcomes=all_ok(10),
            reduce_job=done(99),
            reduce_pod=pod_ok(encode_result([1]).decode(), 4096),
        ),
        lambda s: s["phase"] == "Succeeded" and s["result"] == [1],
        id="reduce-envelope-opened",
    ),
    pytest.param(
        world(
            spec(100, max_failed=100),
            jobs={i: failed(i) for i in range(5, 30)},
            outcomes=[bad(i) for i in range(30, 60)],
        ),
        lambda s: [f["index"] for f in s["failedSubtasks"]] == list(range(5, 25)),
        id="new-and-recorded-failures-merged-by-index",
    ),
]


@pytest.mark.parametrize(("w", "check"), OVERSIZED)
def test_bounded_status(w: World, check: Any) -> None:
    assert check(status_of(w))


def test_start_time_kept_and_set() -> None:
    assert status_of(world())["startTime"] == format_iso(NOW)
    assert status_of(world(previous={"startTime": "2020-01-01T00:00:00Z"}))["startTime"] == "2020-01-01T00:00:00Z"


def test_generation_observed() -> None:
    status = status_of(world(generation=7))
    assert status["observedGeneration"] == 7
    assert {c["observedGeneration"] for c in status["conditions"]} == {7}


def test_last_transition_time_kept_when_unchanged() -> None:
    first = status_of(world())
    later = decide(world(previous=first), NOW + 100).of(WriteStatus)[0].status
    assert condition(later, "Reconciling")["lastTransitionTime"] == format_iso(NOW)


def test_decide_changes_nothing_it_is_given() -> None:
    w = world(jobs={0: done(0), 1: running(1, suspended=True)}, pods={0: pod_ok()}, outcomes=[ok(5)], cursor=2)
    before = (dict(w.children.jobs), dict(w.children.pods), dict(w.outcomes.outcomes), w.children.cursor)
    decide(w, NOW)
    assert (dict(w.children.jobs), dict(w.children.pods), dict(w.outcomes.outcomes), w.children.cursor) == before
    assert w.children.jobs[1].suspended is True


def test_same_input_same_answer() -> None:
    w = world(jobs={0: done(0), 1: failed(1)}, pods={0: pod_ok(), 1: pod_failed()}, cursor=2)
    assert decide(w, NOW) == decide(w, NOW)


def test_reduce_result_decoded() -> None:
    w = world(spec(reduce=True), outcomes=all_ok(10), reduce_job=done(99), reduce_pod=pod_ok('{"sum": 3}'))
    assert status_of(w)["result"] == {"sum": 3}


def test_reduce_started_once_per_step() -> None:
    w = world(spec(reduce=True), outcomes=all_ok(10))
    assert len(decide(w, NOW).of(StartReduce)) == 1
    assert decide(world(spec(reduce=True), outcomes=all_ok(10), reduce_job=running(99)), NOW).of(StartReduce) == []


def test_no_reduce_while_subtasks_remain() -> None:
    w = world(spec(reduce=True), outcomes=all_ok(9), jobs={9: running(9)}, cursor=10)
    assert decide(w, NOW).of(StartReduce) == []


def test_finished_long_ago_gets_its_status_once_more() -> None:
    """A status write lost after the outcome: the step decides the same phase again."""
    w = world(outcomes=[*all_ok(9), bad(9)], previous={"phase": "Failed", "startTime": "x"})
    assert status_of(w)["phase"] == Phase.FAILED


def test_long_ago_time_matters_only_through_grace() -> None:
    assert decide(world(jobs={0: done(0, at=LONG_AGO)}, pods={0: pod_ok()}), NOW).of(RecordOutcomes)
