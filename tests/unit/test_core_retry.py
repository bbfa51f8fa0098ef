"""Retrying failed subtasks (core/retry.py): what a request resets, the status it writes, and
how the child index tells a retry's children from an earlier attempt's. Tables of named cases."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from apwa.api.models import ParallelWorkloadSpec
from apwa.api.vocabulary import Phase, Reason
from apwa.controller.store import ResultStore
from apwa.core import ChildIndex, CreateJobs, PatchStatus, PostEvent, Reset, ResetOutcomes, Step, WriteStatus, decide
from apwa.core.retry import HISTORY_FAILURES, HISTORY_ROUNDS, accept, requested
from apwa.planning import plan
from apwa.rendering import LABEL_ATTEMPT, LABEL_INDEX, LABEL_ROLE, RESULT_FINALIZER, Owner, job_name, render_job
from apwa.results import SubtaskOutcome
from apwa.results.aggregate import failure_entry
from core_builders import NOW, ok, spec, world
from core_builders import bad as bad_outcome


def with_retry(attempt: int, indices: list[int] | None = None, **kw: Any) -> ParallelWorkloadSpec:
    """spec(**kw) with spec.retry set, validated as the API server's schema would."""
    body = {
        **spec(**kw).model_dump(by_alias=True, exclude_none=True),
        "retry": {"attempt": attempt, "indices": indices},
    }
    return ParallelWorkloadSpec.model_validate(body)


def final(i: int) -> SubtaskOutcome:
    return SubtaskOutcome(i, False, reason=Reason.FINAL.value, message="bad input", exit_code=86, job=f"w-{i}")


FAILED_BEFORE = {"phase": "Failed", "completionTime": "2026-01-01T00:00:00Z", "retry": {"attempt": 0}}
SUCCEEDED_BEFORE = {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z", "result": [1]}


# ---- is a retry asked for --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attempt", "status", "want"),
    [
        pytest.param(None, {}, None, id="no-request"),
        pytest.param(1, {}, 1, id="first-retry"),
        pytest.param(1, {"retry": {"attempt": 1}}, None, id="same-request-again-is-a-no-op"),
        pytest.param(3, {"retry": {"attempt": 2}}, 3, id="next-retry"),
        pytest.param(1, {"retry": {"attempt": 2}}, None, id="older-request-is-a-no-op"),
    ],
)
def test_requested(attempt: int | None, status: dict[str, Any], want: int | None) -> None:
    s = with_retry(attempt) if attempt else spec()
    assert requested(s, status) == want


# ---- what an accepted retry does -------------------------------------------------------------
def _reset(step: Step) -> tuple[int, ...]:
    return tuple(r.index for a in step.of(ResetOutcomes) for r in a.resets)


def _written(step: Step) -> dict[str, Any]:
    (w,) = step.of(WriteStatus)
    return w.status


ACCEPT = [
    # name, spec, outcomes, previous status, pending -> reset indices, phase written (None: patch only)
    (
        "every-failure-runs-again-successes-stay",
        with_retry(1, n=4),
        [ok(0), bad_outcome(1), bad_outcome(2), ok(3)],
        FAILED_BEFORE,
        {},
        (1, 2),
        Phase.RUNNING,
    ),
    (
        "indices-choose-among-failures",
        with_retry(1, [2, 3], n=4),
        [ok(0), bad_outcome(1), bad_outcome(2), ok(3)],
        FAILED_BEFORE,
        {},
        (2,),
        Phase.RUNNING,
    ),
    (
        "final-failures-are-left-alone",
        with_retry(1, n=3),
        [ok(0), final(1), bad_outcome(2)],
        FAILED_BEFORE,
        {},
        (2,),
        Phase.RUNNING,
    ),
    (
        "a-final-failure-named-by-index-runs-again",
        with_retry(1, [1], n=3),
        [ok(0), final(1), bad_outcome(2)],
        FAILED_BEFORE,
        {},
        (1,),
        Phase.RUNNING,
    ),
    (
        "nothing-failed-on-a-success-only-notes-the-request",
        with_retry(1, n=2),
        [ok(0), ok(1)],
        SUCCEEDED_BEFORE,
        {},
        (),
        None,
    ),
    (
        "only-finals-on-a-budget-failure-stays-failed",
        with_retry(1, n=2),
        [ok(0), final(1)],
        FAILED_BEFORE,
        {},
        (),
        None,
    ),
    (
        "a-failed-reduce-runs-again-without-resets",
        with_retry(1, n=2, reduce=True),
        [ok(0), ok(1)],
        {**FAILED_BEFORE, "message": "the reduce step failed"},
        {},
        (),
        Phase.RUNNING,
    ),
    (
        "suspended-workload-goes-back-to-suspended",
        with_retry(1, n=2, suspend=True),
        [ok(0), bad_outcome(1)],
        FAILED_BEFORE,
        {},
        (1,),
        Phase.SUSPENDED,
    ),
    (
        "reset-before-a-restart-is-not-reset-twice",
        with_retry(1, n=3),
        [ok(0), ok(2)],
        FAILED_BEFORE,
        {1: Reset(1, 1, {"index": 1, "reason": "BackoffLimitExceeded", "message": "no"})},
        (),
        Phase.RUNNING,
    ),
]


@pytest.mark.parametrize(
    ("s", "outcomes", "previous", "pending", "resets", "phase"),
    [pytest.param(*row[1:], id=row[0]) for row in ACCEPT],
)
def test_accept(
    s: ParallelWorkloadSpec,
    outcomes: list[SubtaskOutcome],
    previous: dict[str, Any],
    pending: dict[int, Reset],
    resets: tuple[int, ...],
    phase: Phase | None,
) -> None:
    w = world(s, outcomes=outcomes, previous=previous)
    assert s.retry is not None
    step = accept(w, s.retry.attempt, pending, NOW)
    assert _reset(step) == resets
    assert all(a.attempt == s.retry.attempt for a in step.of(ResetOutcomes))
    assert [e.reason for e in step.of(PostEvent)] == [Reason.RETRYING]
    if phase is None:
        (patch,) = step.of(PatchStatus)
        assert patch.patch["retry"]["attempt"] == s.retry.attempt and not step.of(WriteStatus)
        return
    status = _written(step)
    assert status["phase"] == phase and status["retry"]["attempt"] == s.retry.attempt
    assert "completionTime" not in status and "result" not in status
    c = status["counts"]
    assert c["total"] == c["pending"] + c["active"] + c["succeeded"] + c["failed"]
    assert c["succeeded"] == sum(o.succeeded for o in outcomes)  # successes stay
    assert c["failed"] == sum(not o.succeeded for o in outcomes) - len(resets)
    # The order that makes a restart safe: the store first, then the status, then the event.
    kinds = [type(a) for a in step.actions]
    assert kinds == [ResetOutcomes, WriteStatus, PostEvent]


def test_accepted_retry_lists_what_it_reset_in_the_history() -> None:
    s = with_retry(1, n=3)
    w = world(s, outcomes=[ok(0), bad_outcome(1, "it broke"), final(2)], previous=FAILED_BEFORE)
    (last,) = _written(accept(w, 1, {}, NOW))["retry"]["history"]
    assert (last["attempt"], last["retried"], last["skippedFinal"]) == (1, 1, 1)
    assert last["failures"] == [failure_entry(bad_outcome(1, "it broke"))]


def test_history_stays_bounded() -> None:
    rounds = [{"attempt": a, "retried": 1} for a in range(1, HISTORY_ROUNDS + 3)]
    attempt = HISTORY_ROUNDS + 3
    s = with_retry(attempt, n=40)
    many = [bad_outcome(i, "x" * 2000) for i in range(40)]
    w = world(s, outcomes=many, previous={**FAILED_BEFORE, "retry": {"attempt": attempt - 1, "history": rounds}})
    history = _written(accept(w, attempt, {}, NOW))["retry"]["history"]
    assert [r["attempt"] for r in history] == list(range(attempt - HISTORY_ROUNDS + 1, attempt + 1))
    assert history[-1]["retried"] == 40 and len(history[-1]["failures"]) == HISTORY_FAILURES
    assert all(len(f["message"]) <= 256 for f in history[-1]["failures"])


def test_after_a_retry_the_window_creates_the_reset_subtasks() -> None:
    # What the executor leaves after ResetOutcomes: outcomes forgotten, index back in the window.
    w = world(spec(n=4, parallelism=2), outcomes=[ok(0), ok(1), ok(2), ok(3)], cursor=4)
    for i in (1, 3):
        w.outcomes.forget(i)
        w.children.retry(i, 1)
    (create,) = decide(w, NOW).of(CreateJobs)
    assert create.indices == (1, 3)
    assert w.children.attempts == {1: 1, 3: 1}


# ---- the child index and attempts ------------------------------------------------------------
def _job(index: int | None, attempt: int | None, *, role: str = "subtask", failed: bool = True) -> dict[str, Any]:
    labels = {LABEL_ROLE: role}
    if index is not None:
        labels[LABEL_INDEX] = str(index)
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    cond = {"type": "Failed" if failed else "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return {
        "metadata": {"name": f"j{index}-{attempt}", "uid": f"u{index}-{attempt}", "labels": labels},
        "status": {"conditions": [cond]},
    }


def _pod(index: int | None, attempt: int | None, *, role: str = "subtask") -> dict[str, Any]:
    body = _job(index, attempt, role=role)
    body["metadata"]["finalizers"] = [RESULT_FINALIZER]
    body["spec"] = {"containers": [{"name": "main"}]}
    body["status"] = {"phase": "Failed"}
    return body


CHILDREN = [
    # name, attempts, round, body, counted (job event changes the index), released at once (hold)
    ("first-attempt-without-label-counts", {}, 0, (3, None, "subtask"), True, False),
    ("first-attempt-with-label-counts", {}, 0, (3, 0, "subtask"), True, False),
    ("earlier-attempt-after-a-retry-is-history", {3: 1}, 0, (3, 0, "subtask"), False, True),
    ("the-retry-attempt-counts", {3: 1}, 0, (3, 1, "subtask"), True, False),
    ("other-subtasks-keep-attempt-0", {3: 1}, 0, (4, 0, "subtask"), True, False),
    ("reduce-of-an-earlier-retry-is-history", {}, 2, (None, 1, "reduce"), False, True),
    ("reduce-of-this-retry-counts", {}, 2, (None, 2, "reduce"), True, False),
]


@pytest.mark.parametrize(
    ("attempts", "rnd", "child", "counted", "released"), [pytest.param(*row[1:], id=row[0]) for row in CHILDREN]
)
def test_children_of_other_attempts_are_ignored(
    attempts: dict[int, int], rnd: int, child: tuple[Any, ...], counted: bool, released: bool
) -> None:
    index, attempt, role = child
    c = ChildIndex(attempts=dict(attempts))
    c.set_round(rnd)
    assert c.job_event("MODIFIED", _job(index, attempt, role=role), ()).changed == counted
    assert c.pod_event("MODIFIED", _pod(index, attempt, role=role), ()) == counted
    assert c.hold("MODIFIED", _pod(index, attempt, role=role), ()) == released


def test_a_new_round_forgets_the_earlier_reduce() -> None:
    c = ChildIndex()
    c.job_event("MODIFIED", _job(None, 0, role="reduce"), ())
    assert c.reduce_job is not None
    c.set_round(1)
    assert c.reduce_job is None


def test_retry_jobs_are_named_and_labelled_for_their_attempt() -> None:
    s = spec(n=5)
    owner = Owner("w", "ns", "uid", {})
    first, retried = (render_job(owner, s, plan(s)[3], 5, a) for a in (0, 2))
    assert (
        (first["metadata"]["name"], retried["metadata"]["name"])
        == ("w-3", "w-3-r2")
        == (
            job_name("w", 3),
            job_name("w", 3, 2),
        )
    )
    assert retried["spec"]["template"]["metadata"]["labels"][LABEL_ATTEMPT] == "2"
    env = {e["name"]: e.get("value") for e in retried["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["APWA_ATTEMPT"] == "2"


# ---- the result store keeps a reset durable --------------------------------------------------
class MemoryChunks:
    """Chunks in a dict: the store's chunk bookkeeping, without a backend."""

    size = 2

    def __init__(self) -> None:
        self.objects: dict[int, bytes] = {}

    async def listing(self) -> Any:
        for chunk, payload in sorted(self.objects.items()):
            yield chunk, payload

    async def read(self, chunk: int) -> bytes | None:
        return self.objects.get(chunk)

    async def write(self, chunk: int, payload: bytes) -> None:
        self.objects[chunk] = payload

    def ref(self, chunks: int) -> dict[str, Any]:
        return {}


def test_store_reset_survives_a_restart_and_keeps_the_successes() -> None:
    async def run() -> None:
        chunks = MemoryChunks()
        store = ResultStore(chunks, 4)
        for o in (ok(0, "a"), bad_outcome(1), ok(2, "c"), ok(3, "d")):
            store.add(o)
        await store.flush()  # both chunks complete: they leave memory
        await store.reset([Reset(1, 1, failure_entry(bad_outcome(1)))])
        assert json.loads(chunks.objects[0])["outcomes"]["0"] == {"ok": True, "result": "a"}
        restarted = ResultStore(chunks, 4)
        outcomes, pending = await restarted.load()
        assert sorted(o.index for o in outcomes) == [0, 2, 3] and [(p.index, p.attempt) for p in pending] == [(1, 1)]
        assert [o.index for o in await restarted.all_results()] == [0, 2, 3]
        restarted.add(ok(1, "b"))  # the retry's outcome replaces the pending entry
        await restarted.flush()
        assert [(o.index, o.result) for o in await restarted.all_results()] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
        assert (await ResultStore(chunks, 4).load())[1] == []

    asyncio.run(run())


def test_a_reset_keeps_what_the_failed_attempt_spent() -> None:
    # Spent stays spent: the pending entry carries the failed attempt's usage across a restart.
    spent = {"prompt_tokens": 100, "completion_tokens": 20, "requests": 2}
    failed = SubtaskOutcome(0, False, reason="BackoffLimitExceeded", message="429", job="w-0", usage=spent)
    w = world(with_retry(1, n=1), outcomes=[failed], previous=FAILED_BEFORE)
    (reset,) = accept(w, 1, {}, NOW).of(ResetOutcomes)
    assert reset.resets[0].usage == spent

    async def run() -> None:
        chunks = MemoryChunks()
        store = ResultStore(chunks, 1)
        store.add(failed)
        await store.flush()
        await store.reset(reset.resets)
        (_, pending) = await ResultStore(chunks, 1).load()
        assert [(p.index, p.usage) for p in pending] == [(0, spent)]

    asyncio.run(run())
