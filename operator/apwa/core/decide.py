"""The controller's decisions, as pure functions of what is known and the time handed in.

`decide` is one step of a running workload: collect finished children into outcomes, release
stored ones, follow spec.suspend, top up the creation window, start the reduce, and build the
next status with the events it warrants. `finished`, `stalled` and `planning_status` cover the
other states. None of them performs I/O or reads a clock: the operator and the local runner
observe, call them, and execute the returned actions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from apwa.api.models import ParallelWorkloadSpec
from apwa.api.vocabulary import FINISHED, KEPT_WHEN_STALLED, ConditionType, EventType, Phase, Reason
from apwa.common.times import format_iso, parse_iso
from apwa.core.actions import (
    Action,
    CreateJobs,
    DeleteWorkload,
    HoldQueuedJobs,
    PatchStatus,
    PostEvent,
    RecordOutcomes,
    ReleaseJobs,
    StartReduce,
    Step,
    SuspendJobs,
    WriteStatus,
)
from apwa.core.children import DEADLINE_EXCEEDED, ChildIndex, lost_message, outcome_of, unreadable_reason
from apwa.core.tally import Tally
from apwa.manifest import format_validation_error
from apwa.planning import Subtask
from apwa.results import Aggregate, ResultInvalid, ResultTruncated, SubtaskOutcome, decode_failure, decode_result
from apwa.results.usage import usage_status
from apwa.status import build

# A finished Job whose pod has not been seen yet: wait this long for the pod before recording
# the outcome without the pod's termination message. Pods hold RESULT_FINALIZER until their
# outcome is stored, so a succeeded Job's pod can only be missing if something removed it: after
# the grace such a subtask is recorded failed with reason ResultLost, never a success without its
# result. A failed Job without a pod is recorded with the Job's own reason and message.
POD_GRACE_SECONDS = 15.0
RESYNC_SECONDS = 30.0
# Job creations in flight per workload (the API client bounds requests in flight overall).
MAX_CREATING = 128
FINISHED_RECHECK_SECONDS = 3600.0
EVENT_MESSAGE_CAP = 1024


class Stalled(Exception):
    """The workload can't progress until something changes; the message says what."""

    def __init__(self, reason: Reason, message: str, retry: float = 30.0) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry = reason, message, retry


@dataclass(frozen=True, slots=True)
class World:
    """Everything a step decides from. `previous` is the status as last read or written."""

    spec: ParallelWorkloadSpec
    plan: Sequence[Subtask]
    children: ChildIndex
    outcomes: Aggregate
    previous: Mapping[str, Any]
    generation: int | None = None
    creating: Collection[int] = ()
    results_ref: dict[str, Any] | None = None
    # Since when (epoch seconds) the operator's view of the pods is complete: None while the pods'
    # watch is down. After an outage the Jobs' watch may be back before the pods' is; a pod not
    # seen then is not missing, and its grace only starts once the pods are listed again.
    pods_current_since: float | None = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The phase a step arrives at, and what it says about it."""

    phase: Phase
    reason: str  # a Reason, or the one a finished status already carries
    message: str
    result: Any = None
    completion: str | None = None


def read_spec(raw: Mapping[str, Any] | None) -> ParallelWorkloadSpec:
    try:
        return ParallelWorkloadSpec.model_validate(raw or {})
    except ValidationError as e:
        problems = "; ".join(format_validation_error(e, "spec"))
        raise Stalled(Reason.INVALID_SPEC, f"the spec is invalid: {problems}", retry=300) from None


# ---- a running workload --------------------------------------------------------------------
def decide(w: World, now: float) -> Step:
    new, retry = collect(w.children, w.outcomes, now, w.pods_current_since)
    tally = Tally(w.outcomes, new)
    actions: list[Action] = []
    if new:
        actions.append(RecordOutcomes(tuple(new)))
    released, unfinished, queued, held = _sort_jobs(w, tally)
    if released:
        actions.append(ReleaseJobs(released))
    actions += _follow_suspend(w, unfinished, held)
    allowed = w.spec.failure.allowed(len(w.plan))
    failing = tally.failed > allowed
    spent = _budget_spent(w.spec, tally)
    if not w.spec.suspend and not failing and not spent:
        # The window counts every unfinished Job, admitted by Kueue or not (docs/kueue.md says why).
        create, resume_at = _window(w, tally, len(unfinished))
        if create:
            actions.append(CreateJobs(create, resume_at))
    active = len(unfinished) - queued
    verdict = _verdict(w, tally, allowed, failing, active, queued, now)
    if spent and not failing and tally.finished < len(w.plan):
        verdict = _out_of_tokens(w, tally, active + queued, now)
    if verdict.phase == Phase.REDUCING and w.children.reduce_job is None:
        actions += [StartReduce(), PostEvent(EventType.NORMAL, Reason.REDUCING, _REDUCE_STARTED)]
    status = _status(w, tally, verdict, active, queued, now)
    actions.insert(_status_position(actions), WriteStatus(status, final=verdict.completion is not None))
    if verdict.completion and not w.previous.get("completionTime"):
        actions.append(_finished_event(verdict))
    return Step(tuple(actions), wake_in=min(retry, RESYNC_SECONDS))


_REDUCE_STARTED = "all subtasks finished; the reduce Job started"


def collect(
    children: ChildIndex, recorded: Aggregate, now: float, pods_since: float | None = 0.0
) -> tuple[list[SubtaskOutcome], float]:
    """Outcomes of finished Jobs not recorded yet, and how soon to look again for late pods.
    `pods_since`: see World.pods_current_since."""
    out: list[SubtaskOutcome] = []
    retry = RESYNC_SECONDS
    for index, job in children.jobs.items():
        if not job.finished or index in recorded.outcomes:
            continue
        pod = children.pods.get(index)
        if job.succeeded and pod is not None and pod.uploading:
            continue  # its store sidecar is still uploading; the pod's next event wakes us
        needs_pod = job.succeeded or job.reason != DEADLINE_EXCEEDED
        if needs_pod and (pod is None or (job.succeeded and not pod.succeeded)):
            if pods_since is None:  # the pods' watch is down: its pod may well exist
                retry = min(retry, POD_GRACE_SECONDS)
                continue
            waited = now - max(job.finished_at if job.finished_at is not None else now, pods_since)
            if waited < POD_GRACE_SECONDS:
                retry = min(retry, POD_GRACE_SECONDS - waited + 0.1)
                continue
        out.append(outcome_of(index, job, pod, children.usage_of(index)))
    return out, retry


def _follow_suspend(w: World, unfinished: Sequence[int], held: Sequence[int]) -> list[Action]:
    """spec.suspend holds every unfinished Job; resuming releases only the Jobs it held, so a Job
    suspended by anything else (Kueue, until its quota admits it) is never unsuspended here.
    `held`: the unfinished Jobs marked held."""
    jobs = w.children.jobs
    if w.spec.suspend:
        # A held Job of ours unsuspended by someone else is suspended again; Kueue keeps a Job
        # suspended itself once its Workload is inactive.
        flip = [i for i in unfinished if not jobs[i].held or not (jobs[i].suspended or jobs[i].queued)]
    else:
        flip = list(held)
    own = tuple((i, jobs[i].name) for i in flip if not jobs[i].queued)
    kueue = tuple((i, jobs[i].name) for i in flip if jobs[i].queued)
    actions: list[Action] = []
    if own:
        actions.append(SuspendJobs(own, w.spec.suspend))
    if kueue:
        actions.append(HoldQueuedJobs(kueue, w.spec.suspend))
    return actions


def _sort_jobs(w: World, tally: Tally) -> tuple[tuple[tuple[int, str, int | None], ...], list[int], int, list[int]]:
    """One pass over the Jobs (every step makes it, over up to spec.parallelism Jobs): those whose
    outcome is recorded (now or before), each with its template's TTL, to release; the unfinished
    others, by index; how many of those await admission by Kueue; and which are held."""
    recorded, new = tally.recorded.outcomes, tally.new  # `in tally`, without a call per Job
    released: list[tuple[int, str, int | None]] = []
    unfinished: list[int] = []
    held: list[int] = []
    queued = 0
    for i, job in w.children.jobs.items():
        if i in recorded or i in new:
            released.append((i, job.name, w.spec.templates[w.plan[i].template].ttl_seconds_after_finished))
        elif not job.finished:
            unfinished.append(i)
            if job.held:
                held.append(i)
            if job.queued and job.awaiting_admission:  # the property only for Kueue's Jobs
                queued += 1
    return tuple(released), unfinished, queued, held


def _window(w: World, tally: Tally, active: int) -> tuple[tuple[int, ...], int]:
    """Top the sliding window up: the next indices that have no Job, no creation, no outcome."""
    creating = len(w.creating)
    chunk = w.spec.packed or 1
    room = min(w.spec.parallelism - active - creating, MAX_CREATING * chunk - creating)
    jobs, total = w.children.jobs, len(w.plan)
    picked: list[int] = []
    i = w.children.cursor
    while room > 0 and i < total:
        if i not in tally and i not in jobs and i not in w.creating:
            picked.append(i)
            room -= 1
        i += 1
    if chunk > 1 and len(picked) < chunk and room == 0 and active + creating > 0:
        # Packed: wait until a whole chunk fits rather than start a small Indexed Job for the few
        # slots that came free (unless nothing runs: then the window itself is small).
        if any(j not in tally and j not in jobs and j not in w.creating for j in range(i, total)):
            return (), w.children.cursor
    return tuple(picked), i


def _verdict(w: World, tally: Tally, allowed: int, failing: bool, active: int, queued: int, now: float) -> Verdict:
    total = len(w.plan)
    if failing:
        message = f"{tally.failed} subtasks failed, more than the {allowed} allowed by spec.failurePolicy"
        if active + queued:
            still = f"{active + queued} still finishing"
            return Verdict(Phase.FAILED, Reason.TOO_MANY_FAILURES, f"{message}; no new subtasks start, {still}")
        return Verdict(Phase.FAILED, Reason.TOO_MANY_FAILURES, message, completion=_completion(w.previous, now))
    if tally.finished == total:
        return _all_finished(w, tally, now)
    if w.spec.suspend:
        message = f"suspended: {tally.finished}/{total} subtasks finished; set spec.suspend=false to resume"
        return Verdict(Phase.SUSPENDED, Reason.SUSPENDED, message)
    message = f"{tally.succeeded}/{total} subtasks succeeded, {tally.failed} failed, {active} active"
    if queued:
        message += f", {queued} awaiting admission by Kueue"
    return Verdict(Phase.RUNNING, Reason.SUBTASKS_RUNNING, message)


def _budget_spent(spec: ParallelWorkloadSpec, tally: Tally) -> bool:
    """The finished subtasks spent spec.agent.maxTotalTokens: like the failure budget, no new
    subtask starts (the running ones finish, and count)."""
    budget = spec.agent.max_total_tokens if spec.agent else None
    return budget is not None and tally.usage.total_tokens >= budget


def _out_of_tokens(w: World, tally: Tally, active: int, now: float) -> Verdict:
    assert w.spec.agent is not None and w.spec.agent.max_total_tokens is not None
    message = (
        f"the agents spent {tally.usage.total_tokens} tokens, the budget spec.agent.maxTotalTokens is "
        f"{w.spec.agent.max_total_tokens}: no new subtasks start"
    )
    if active:
        return Verdict(Phase.FAILED, Reason.TOKEN_BUDGET_EXHAUSTED, f"{message}, {active} still finishing")
    never = len(w.plan) - tally.finished
    message = f"{message}; {tally.succeeded} succeeded, {tally.failed} failed, {never} never started"
    return Verdict(Phase.FAILED, Reason.TOKEN_BUDGET_EXHAUSTED, message, completion=_completion(w.previous, now))


def _completion(previous: Mapping[str, Any], now: float) -> str:
    return previous.get("completionTime") or format_iso(now)


def _all_finished(w: World, tally: Tally, now: float) -> Verdict:
    prev = w.previous
    base = f"{tally.succeeded}/{len(w.plan)} subtasks succeeded"
    if tally.failed:
        base += f", {tally.failed} failed (within spec.failurePolicy)"
    if prev.get("phase") in FINISHED:
        # Decided before (the write of its completion time may have been lost): keep it.
        return Verdict(
            Phase(prev["phase"]),
            _ready_reason(prev),
            prev.get("message", base),
            prev.get("result"),
            prev.get("completionTime"),
        )
    if not (w.spec.results and w.spec.results.reduce):
        return Verdict(Phase.SUCCEEDED, Reason.ALL_SUBTASKS_FINISHED, base, tally.merged().summary(), format_iso(now))
    job, pod = w.children.reduce_job, w.children.reduce_pod
    if job is None or not job.finished:
        return Verdict(Phase.REDUCING, Reason.REDUCING, f"{base}; reducing")
    if job.succeeded and pod is not None and pod.succeeded and pod.uploading:
        return Verdict(Phase.REDUCING, Reason.REDUCING, f"{base}; collecting the reduce result")
    if job.succeeded and not (pod and pod.succeeded):
        if now - (job.finished_at if job.finished_at is not None else now) < POD_GRACE_SECONDS:
            return Verdict(Phase.REDUCING, Reason.REDUCING, f"{base}; collecting the reduce result")
        lost = f"the reduce step's {lost_message(job)}"
        return Verdict(Phase.FAILED, Reason.RESULT_LOST, lost, None, format_iso(now))
    if job.succeeded:
        assert pod is not None
        if pod.store_error is not None:
            message = f"the reduce step's result could not be stored: {pod.store_error}"
            return Verdict(Phase.FAILED, Reason.STORE_FAILED, message, None, format_iso(now))
        if pod.stored is not None:
            return Verdict(Phase.SUCCEEDED, Reason.REDUCED, base, {"stored": pod.stored}, format_iso(now))
        try:
            result = decode_result(pod.message, pod.budget)
        except (ResultTruncated, ResultInvalid) as e:
            return Verdict(Phase.FAILED, unreadable_reason(e), f"the reduce step's result: {e}", None, format_iso(now))
        return Verdict(Phase.SUCCEEDED, Reason.REDUCED, base, result, format_iso(now))
    detail = (decode_failure(pod.message)[0] if pod else "") or job.message
    return Verdict(Phase.FAILED, Reason.REDUCE_FAILED, f"the reduce step failed: {detail}", None, format_iso(now))


def _ready_reason(status: Mapping[str, Any]) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") == ConditionType.READY:
            return str(c.get("reason", ""))
    return ""


def _status(w: World, tally: Tally, v: Verdict, active: int, queued: int, now: float) -> dict[str, Any]:
    prev = w.previous
    result = v.result if v.result is not None else prev.get("result") if v.completion else None
    return build(
        phase=v.phase,
        reason=v.reason,
        message=v.message,
        generation=w.generation,
        total=len(w.plan),
        active=active,
        agg=tally,
        awaiting_admission=queued,
        previous=dict(prev),
        start_time=prev.get("startTime") or format_iso(now),
        completion_time=v.completion,
        result=result,
        results_ref=w.results_ref,
        usage=_usage(w, tally),
        now=format_iso(now),
    )


def _usage(w: World, tally: Tally) -> dict[str, Any] | None:
    """status.usage: what the subtasks' agents spent, and the reduce's once its pod reported."""
    agent = w.spec.agent
    totals = tally.usage.plus(w.children.usage_of(None))
    if agent is None and not totals.reports:
        return None
    return usage_status(totals, agent.price_per_1k_tokens if agent else None)


def _status_position(actions: list[Action]) -> int:
    """The status goes after every change to children and before every event."""
    return next((n for n, a in enumerate(actions) if isinstance(a, PostEvent)), len(actions))


def _finished_event(v: Verdict) -> PostEvent:
    if v.phase == Phase.SUCCEEDED:
        return PostEvent(EventType.NORMAL, Reason.SUCCEEDED, v.message)
    return PostEvent(EventType.WARNING, Reason.FAILED, v.message)


# ---- other states --------------------------------------------------------------------------
def finished(spec: ParallelWorkloadSpec, status: Mapping[str, Any], generation: int | None, now: float) -> Step:
    """A finished workload: nothing runs; acknowledge spec edits and apply its own TTL."""
    actions: list[Action] = []
    if generation is not None and status.get("observedGeneration") != generation:
        # A spec edit after the end changes nothing, but kstatus readers (Argo CD, Flux) need
        # to see that this generation was observed, or they wait forever.
        conditions = [{**c, "observedGeneration": generation} for c in status.get("conditions") or []]
        actions.append(PatchStatus({"observedGeneration": generation, "conditions": conditions}))
    ttl = spec.ttl_seconds_after_finished
    done = parse_iso(status.get("completionTime"))
    if ttl is None or done is None:
        return Step(tuple(actions), wake_in=FINISHED_RECHECK_SECONDS)
    left = ttl - (now - done)
    if left > 0:
        return Step(tuple(actions), wake_in=left)
    return Step((*actions, DeleteWorkload()), wake_in=FINISHED_RECHECK_SECONDS)


def stalled(
    e: Stalled,
    *,
    previous: Mapping[str, Any],
    generation: int | None,
    total: int,
    active: int,
    outcomes: Aggregate | None,
    written: Mapping[str, Any] | None,
    backoff: float,
    now: float,
    awaiting_admission: int = 0,
) -> tuple[Step, float]:
    """Report what blocks the workload, once per change, and back off while it stays blocked.

    Returns the step and the next backoff: doubling from `backoff` up to the stall's own retry
    (any change to the workload wakes the loop at once anyway)."""
    phase = Phase(previous["phase"]) if previous.get("phase") in KEPT_WHEN_STALLED else Phase.PENDING
    status = build(
        phase=phase,
        reason=e.reason,
        message=e.message,
        generation=generation,
        total=total,
        active=active,
        agg=outcomes,
        awaiting_admission=awaiting_admission,
        previous=dict(previous),
        stalled=True,
        start_time=previous.get("startTime"),
        now=format_iso(now),
    )
    actions: tuple[Action, ...] = ()
    if without_times(status) != written:
        actions = (WriteStatus(status, final=True), PostEvent(EventType.WARNING, e.reason, e.message))
    return Step(actions, wake_in=min(e.retry, backoff)), min(backoff * 2, e.retry)


def planning_status(
    previous: Mapping[str, Any], what: str, generation: int | None, now: float
) -> dict[str, Any] | None:
    """Phase Planning while a dynamic planner thinks (a model may take a minute), or None to
    keep a Stalled condition from an earlier failure: it holds the reason to act on until a plan
    is stored, rather than flapping Stalled -> Planning -> Stalled on every retry."""
    if any(
        c.get("type") == ConditionType.STALLED and c.get("status") == "True" for c in previous.get("conditions") or []
    ):
        return None
    return build(
        phase=Phase.PLANNING,
        reason=Reason.PLANNING,
        message=f"asking the {what} for subtasks",
        generation=generation,
        total=0,
        active=0,
        agg=None,
        previous=dict(previous),
        start_time=previous.get("startTime") or format_iso(now),
        now=format_iso(now),
    )


def without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    """A status minus its time stamps: two statuses equal here say the same thing."""
    out = {k: v for k, v in status.items() if k not in ("startTime", "completionTime")}
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
    ]
    return out


def event_message(message: str) -> str:
    return message[:EVENT_MESSAGE_CAP]
