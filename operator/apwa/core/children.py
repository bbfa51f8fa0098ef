"""What the core knows of a workload's children: Job and Pod states, indexed by subtask.

`JobState` and `PodResult` are extracted once from a watch event or a list; `ChildIndex` keeps
the latest of each per subtask, fed by the operator's watches (or, for the local runner, by
its processes). Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from apwa.api.vocabulary import Reason, Role
from apwa.common.times import parse_iso
from apwa.rendering import (
    ANNOTATION_HELD,
    LABEL_ATTEMPT,
    LABEL_INDEX,
    LABEL_KUEUE_QUEUE,
    LABEL_ROLE,
    RESULT_FINALIZER,
    STORE_SIDECAR,
)
from apwa.rendering.packed import ANNOTATION_INDICES, COMPLETION_INDEX, parse_indices
from apwa.results import (
    ResultInvalid,
    ResultTruncated,
    StoreFailed,
    SubtaskOutcome,
    decode_failure,
    decode_result,
    decode_stored,
    decode_usage,
    message_budget,
)
from apwa.results.keys import result_key
from apwa.results.usage import merged

# Kubernetes's words for finished Jobs (condition types) and pods (phases).
JOB_COMPLETE, JOB_FAILED = "Complete", "Failed"
POD_SUCCEEDED, POD_FAILED = "Succeeded", "Failed"
# A Job killed by its deadline: the pod was killed too, its message adds nothing.
DEADLINE_EXCEEDED = "DeadlineExceeded"
# A packed subtask whose index failed (backoffLimitPerIndex spent, or a FailIndex rule): the Job
# controller's word for a single-pod Job that did the same.
INDEX_FAILED = "BackoffLimitExceeded"


@dataclass
class JobState:
    name: str
    finished: bool = False
    succeeded: bool = False
    reason: str = ""
    message: str = ""
    suspended: bool = False
    finished_at: float | None = None  # epoch seconds, from the Job's condition
    uid: str = ""
    failed_pods: int = 0  # status.failed: failures counted against backoffLimit (Ignored ones are not)
    queued: bool = False  # Kueue's (LABEL_KUEUE_QUEUE): Kueue unsuspends it on admission, and only Kueue
    held: bool = False  # ANNOTATION_HELD: spec.suspend stopped it, and only resuming it restarts it

    @property
    def awaiting_admission(self) -> bool:
        """Suspended by Kueue until its quota admits it (not by spec.suspend): pending, not active."""
        return self.queued and self.suspended and not self.held and not self.finished

    @classmethod
    def from_body(cls, job: dict[str, Any]) -> JobState:
        status = job.get("status") or {}
        meta = job["metadata"]
        state = cls(
            name=meta["name"],
            suspended=bool((job.get("spec") or {}).get("suspend")),
            uid=meta.get("uid", ""),
            failed_pods=int(status.get("failed") or 0),
            queued=LABEL_KUEUE_QUEUE in (meta.get("labels") or {}),
            held=(meta.get("annotations") or {}).get(ANNOTATION_HELD) == "true",
        )
        for c in status.get("conditions") or []:
            if c.get("status") != "True":
                continue
            if c.get("type") in (JOB_COMPLETE, JOB_FAILED):
                state.finished = True
                state.succeeded = c["type"] == JOB_COMPLETE
                state.reason = c.get("reason") or c["type"]
                state.message = c.get("message") or ""
                state.finished_at = parse_iso(c.get("lastTransitionTime"))
        return state


@dataclass
class PodResult:
    """The termination of a pod's first (main) container, and of its store sidecar if it has one."""

    phase: str
    exit_code: int | None
    reason: str
    message: str
    budget: int | None = None  # bytes of a termination message the kubelet keeps in this pod
    uploading: bool = False  # the store sidecar has not finished yet
    stored: dict[str, Any] | None = None  # {"key", "size", "sha256"?}: the result is in the store
    store_error: str | None = None  # the sidecar's upload failed

    @property
    def succeeded(self) -> bool:
        return self.phase == POD_SUCCEEDED

    @property
    def usage(self) -> dict[str, Any] | None:
        """What this pod's agent spent, from its main container's envelope."""
        return decode_usage(self.message)

    @classmethod
    def from_body(cls, pod: dict[str, Any]) -> PodResult | None:
        status = pod.get("status") or {}
        phase = status.get("phase", "")
        if phase not in (POD_SUCCEEDED, POD_FAILED):
            return None
        spec = pod.get("spec") or {}
        containers = spec.get("containers") or [{}]
        main = containers[0].get("name")
        budget = message_budget(spec)
        result = cls(phase, None, status.get("reason") or "", status.get("message") or "", budget)
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") == main:
                term = (cs.get("state") or {}).get("terminated") or {}
                result = cls(phase, term.get("exitCode"), term.get("reason") or "", term.get("message") or "", budget)
        if phase == POD_SUCCEEDED:
            result._read_sidecar(pod)
        elif result.exit_code is None:
            # The main container never ran: a failed init container (e.g. apwa-fetch, an input
            # that could not be downloaded) says why, in its own termination message.
            for cs in status.get("initContainerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or {}
                if term.get("exitCode"):
                    reason = term.get("reason") or "Error"
                    return cls(phase, term["exitCode"], reason, term.get("message") or "", budget)
        return result

    def _read_sidecar(self, pod: dict[str, Any]) -> None:
        sidecar = next((c for c in pod["spec"].get("initContainers") or [] if c.get("name") == STORE_SIDECAR), None)
        if sidecar is None:
            return
        status = next(
            (s for s in pod["status"].get("initContainerStatuses") or [] if s.get("name") == STORE_SIDECAR), None
        )
        term = ((status or {}).get("state") or {}).get("terminated")
        if term is None:
            self.uploading = True
            return
        try:
            stored = decode_stored(term.get("message"))
        except StoreFailed as e:
            self.store_error = str(e)
            return
        if stored is not None:
            # The key comes from the pod the operator made (its sidecar's settings and its uid),
            # never from the message: a result can't be pointed at another pod's object.
            env = {e["name"]: e.get("value") for e in sidecar.get("env") or []}
            index = env.get("APWA_INDEX")
            key = result_key(env.get("APWA_STORE_ROOT") or "", int(index) if index else None, pod["metadata"]["uid"])
            self.stored = {"key": key, **stored}


def outcome_of(index: int, job: JobState, pod: PodResult | None, usage: dict[str, Any] | None = None) -> SubtaskOutcome:
    """A finished subtask's outcome: the Job says whether, the pod's message says what.
    `usage`: what all its pods spent (default: the last pod's own)."""
    spent = usage if usage is not None else pod.usage if pod else None
    if job.succeeded and not (pod and pod.succeeded):
        return result_lost(index, job, spent)
    if job.succeeded:
        if pod is not None and pod.store_error is not None:
            message = f"the subtask succeeded but its result could not be stored: {pod.store_error}"
            reason = Reason.STORE_FAILED.value
            return SubtaskOutcome(index, False, reason=reason, message=message, job=job.name, usage=spent)
        if pod is not None and pod.stored is not None:
            return SubtaskOutcome(index, True, stored=pod.stored, job=job.name, usage=spent)
        try:
            result = decode_result(pod.message, pod.budget) if pod else None
        except (ResultTruncated, ResultInvalid) as e:  # never a success without its whole, writable result
            reason = unreadable_reason(e).value
            return SubtaskOutcome(index, False, reason=reason, message=str(e), job=job.name, usage=spent)
        return SubtaskOutcome(index, True, result=result, job=job.name, usage=spent)
    text, final = decode_failure(pod.message if pod else None)
    return SubtaskOutcome(
        index,
        False,
        reason=Reason.FINAL.value if final else job.reason or JOB_FAILED,
        message=text or job.message,
        exit_code=pod.exit_code if pod else None,
        job=job.name,
        failed_pods=job.failed_pods or None,
        usage=spent,
    )


def unreadable_reason(e: ResultTruncated | ResultInvalid) -> Reason:
    return Reason.RESULT_TRUNCATED if isinstance(e, ResultTruncated) else Reason.RESULT_INVALID


def result_lost(index: int, job: JobState, usage: dict[str, Any] | None = None) -> SubtaskOutcome:
    """A succeeded Job whose succeeded pod was never seen: its result can't be read, and a success
    without its result would be a silent loss."""
    message = lost_message(job)
    return SubtaskOutcome(index, False, reason=Reason.RESULT_LOST.value, message=message, job=job.name, usage=usage)


def lost_message(job: JobState) -> str:
    return (
        f"Job {job.name} succeeded but its pod was gone before the operator read its termination message "
        f"(its {RESULT_FINALIZER} finalizer was removed, or the pod force-deleted, by something else); "
        "the result is lost: run the subtask again, and leave that finalizer to the operator"
    )


def holds_result(body: dict[str, Any]) -> bool:
    """The pod carries RESULT_FINALIZER: it can't go away until the operator releases it."""
    return RESULT_FINALIZER in (body["metadata"].get("finalizers") or ())


def role_of(body: dict[str, Any]) -> str | None:
    return (body["metadata"].get("labels") or {}).get(LABEL_ROLE)


def index_of(body: dict[str, Any]) -> int:
    """The subtask of a subtask Job or pod; a packed pod's is its completion index's in the chunk."""
    meta = body["metadata"]
    annotations = meta.get("annotations") or {}
    packed = annotations.get(ANNOTATION_INDICES)
    if packed is not None:
        k = annotations.get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(COMPLETION_INDEX)
        return parse_indices(packed)[int(k or 0)]
    return int(meta["labels"][LABEL_INDEX])


def chunk_of(body: dict[str, Any]) -> tuple[int, ...] | None:
    """A packed chunk Job's subtasks by completion index; None for any other object."""
    if body.get("kind", "Job") != "Job":
        return None
    meta = body["metadata"]
    if COMPLETION_INDEX in (meta.get("annotations") or {}):
        return None  # one of its pods
    packed = (meta.get("annotations") or {}).get(ANNOTATION_INDICES)
    return parse_indices(packed) if packed is not None else None


def index_state(base: JobState, k: int, done: Container[int], failed: Container[int], now: float | None) -> JobState:
    """Completion index k of a chunk Job as if it had a Job of its own: finished once it is in
    completedIndexes or failedIndexes, or the whole Job finished (its deadline, or more failed
    indexes than maxFailedIndexes: then the unfinished ones end with the Job's reason). `now`
    stands in for the finish time Kubernetes does not record per index."""
    state = JobState(base.name, suspended=base.suspended, uid=base.uid, queued=base.queued, held=base.held)
    if k in done:
        state.finished = state.succeeded = True
        state.reason, state.finished_at = JOB_COMPLETE, now
    elif k in failed:
        state.finished, state.reason, state.finished_at = True, INDEX_FAILED, now
        state.message = f"index {k} of Job {base.name} failed"
    elif base.finished:
        state.finished, state.reason, state.message = True, base.reason, base.message
        state.finished_at = base.finished_at
    return state


def attempt_of(body: dict[str, Any]) -> int:
    """The retry a child belongs to; children made before retries existed carry no label: 0."""
    return int((body["metadata"].get("labels") or {}).get(LABEL_ATTEMPT) or 0)


@dataclass(frozen=True, slots=True)
class JobEffect:
    changed: bool = False
    finished: JobState | None = None  # the Job, when this event is the first to show it finished


@dataclass
class ChildIndex:
    """The latest known state of every child that still matters.

    Children of subtasks whose outcome is recorded are dropped: they can't change anything.
    `cursor` is where the creation window resumes: every index below it is created, being
    created or recorded. Losing a Job (deleted before its outcome was stored, or its creation
    refused) moves it back, and `lost` remembers the index until the cursor next advances, so an
    advance decided before the loss can't skip it.
    """

    jobs: dict[int, JobState] = field(default_factory=dict)
    pods: dict[int, PodResult] = field(default_factory=dict)
    reduce_job: JobState | None = None
    reduce_pod: PodResult | None = None
    cursor: int = 0
    lost: set[int] = field(default_factory=set)
    # Pods holding RESULT_FINALIZER, by subtask (every pod of every attempt), and the reduce's:
    # released once the outcome (or the final status) is stored. Kept by `clear`.
    held: dict[int, set[str]] = field(default_factory=dict)
    reduce_held: set[str] = field(default_factory=set)
    # Retries (core/retry.py): the attempt of each subtask a retry reset and that has no outcome
    # yet (absent: 0), and the retry the reduce belongs to. Children of any other attempt are
    # history: their outcome was stored before the retry, so they are ignored (and released).
    attempts: dict[int, int] = field(default_factory=dict)
    round: int = 0
    # Packed chunk Jobs, by name: what their last event said (to apply only what changed), and
    # their subtasks not released yet (the Job's TTL may only run once none is left).
    chunk_seen: dict[str, tuple[tuple[Any, ...], str, str]] = field(default_factory=dict)
    chunk_left: dict[str, set[int]] = field(default_factory=dict)

    def current(self, body: dict[str, Any]) -> bool:
        """The child belongs to the attempt that counts now for its subtask (or reduce)."""
        if role_of(body) == Role.REDUCE:
            return attempt_of(body) == self.round
        return attempt_of(body) == self.attempts.get(index_of(body), 0)

    def set_round(self, attempt: int) -> None:
        """The retry accepted last: a reduce of an earlier one no longer counts."""
        if attempt != self.round:
            self.round = attempt
            self.reduce_job = self.reduce_pod = None

    # What each finished pod's agent spent, by subtask and pod name: a subtask retried inside its
    # Job spent tokens in every attempt. Pods hold RESULT_FINALIZER until the outcome is stored,
    # so after a restart the relist finds all of them again.
    spent: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    reduce_spent: dict[str, dict[str, Any]] = field(default_factory=dict)

    def job_event(
        self, event_type: str, body: dict[str, Any], recorded: Container[int], now: float | None = None
    ) -> JobEffect:
        """Apply a watch event; say whether it matters (and whether a Job has just finished).
        `now`: when a packed index is seen finished (Kubernetes keeps no time per index)."""
        role = role_of(body)
        if role == Role.SUBTASK and (chunk := chunk_of(body)) is not None:
            return self._chunk_event(event_type, body, chunk, recorded, now)
        if role not in (Role.REDUCE, Role.SUBTASK) or not self.current(body):
            return JobEffect()
        if role == Role.REDUCE:
            self.reduce_job = None if event_type == "DELETED" else JobState.from_body(body)
            return JobEffect(changed=True)
        if role != Role.SUBTASK:
            return JobEffect()
        index = index_of(body)
        if index in recorded:
            self.jobs.pop(index, None)
            return JobEffect()
        if event_type == "DELETED":
            self.lose(index)  # created again, unless its outcome gets recorded first
            return JobEffect(changed=True)
        state = JobState.from_body(body)
        old = self.jobs.get(index)
        self.jobs[index] = state
        return JobEffect(changed=True, finished=state if state.finished and not (old and old.finished) else None)

    def _chunk_event(
        self, event_type: str, body: dict[str, Any], chunk: tuple[int, ...], recorded: Container[int], now: float | None
    ) -> JobEffect:
        attempt, name = attempt_of(body), body["metadata"]["name"]
        mine = [(k, i) for k, i in enumerate(chunk) if i not in recorded and self.attempts.get(i, 0) == attempt]
        if event_type == "DELETED":
            self.chunk_seen.pop(name, None)
            for _, i in mine:
                if (job := self.jobs.get(i)) is None or job.name == name:
                    self.lose(i)
            return JobEffect(changed=True)
        base = JobState.from_body(body)
        status = body.get("status") or {}
        done, failed = status.get("completedIndexes") or "", status.get("failedIndexes") or ""
        flags = (base.uid, base.suspended, base.held, base.queued, base.finished)
        seen = self.chunk_seen.get(name)
        self.chunk_seen[name] = (flags, done, failed)
        if mine and name not in self.chunk_left:
            self.chunk_left[name] = {i for _, i in mine}
        if seen == (flags, done, failed):
            return JobEffect()
        done_k, failed_k = set(parse_indices(done)), set(parse_indices(failed))
        if seen is not None and seen[0] == flags:  # only indexes finished since: apply just those
            changed = (done_k - set(parse_indices(seen[1]))) | (failed_k - set(parse_indices(seen[2])))
            mine = [(k, i) for k, i in mine if k in changed]
        finished = None
        for k, i in mine:
            old = self.jobs.get(i)
            state = index_state(base, k, done_k, failed_k, now)
            if old is not None and old.finished and state.finished:
                state.finished_at = old.finished_at or state.finished_at
            self.jobs[i] = state
            if state.finished and not (old and old.finished):
                finished = state
        return JobEffect(changed=True, finished=finished)

    def pod_event(self, event_type: str, body: dict[str, Any], recorded: Container[int]) -> bool:
        """Apply a watch event; True when it brought a result worth a step."""
        if event_type == "DELETED":
            return False  # the last state seen stays: a deleted pod's message is still its result
        result = PodResult.from_body(body)
        if result is None or not self.current(body):
            return False
        if role_of(body) == Role.REDUCE:
            self._spend(None, body, result)
            if not (self.reduce_pod and self.reduce_pod.succeeded and not self.reduce_pod.uploading):
                self.reduce_pod = result
            return True
        index = index_of(body)
        if index in recorded:
            return False
        self._spend(index, body, result)
        old = self.pods.get(index)
        # A retried pod's failure doesn't hide an earlier success; a finished upload does replace it.
        if not (old and old.succeeded and not old.uploading) or result.succeeded:
            self.pods[index] = result
        return True

    def hold(self, event_type: str, body: dict[str, Any], recorded: Container[int]) -> bool:
        """Track a pod's RESULT_FINALIZER; True when it must be released now: its subtask's
        outcome is stored already, or the pod is being deleted before it finished (nothing to
        read; the Job controller decides what comes next). A finished pod being deleted stays
        held until its outcome is stored."""
        role, name = role_of(body), body["metadata"].get("name", "")
        if role not in (Role.REDUCE, Role.SUBTASK) or not name:
            return False
        index = index_of(body) if role == Role.SUBTASK else None
        self._unhold(index, name)
        if event_type == "DELETED" or not holds_result(body):
            return False
        if body["metadata"].get("deletionTimestamp") and PodResult.from_body(body) is None:
            return True
        if not self.current(body):
            return True  # an earlier attempt's: its outcome was stored before the retry
        if index is None:
            self.reduce_held.add(name)
            return False
        if index in recorded:
            return True
        self.held.setdefault(index, set()).add(name)
        return False

    def _unhold(self, index: int | None, name: str) -> None:
        if index is None:
            self.reduce_held.discard(name)
            return
        names = self.held.get(index)
        if names is not None:
            names.discard(name)
            if not names:
                del self.held[index]

    def let_go(self, index: int) -> set[str]:
        """The subtask's outcome is stored: the names of its pods to release."""
        return self.held.pop(index, set())

    def let_go_all(self) -> set[str]:
        """The workload is finished: every pod still held, the reduce's included."""
        names = set().union(*self.held.values(), self.reduce_held)
        self.held.clear()
        self.reduce_held.clear()
        return names

    def seed_job(self, body: dict[str, Any], recorded: Container[int], now: float | None = None) -> None:
        """A Job listed at start: what the watch already delivered is newer, and wins."""
        if role_of(body) == Role.SUBTASK and (chunk := chunk_of(body)) is not None:
            if body["metadata"]["name"] not in self.chunk_seen:
                self._chunk_event("ADDED", body, chunk, recorded, now)
            return
        if not self.current(body):
            return
        if role_of(body) == Role.REDUCE:
            self.reduce_job = self.reduce_job or JobState.from_body(body)
            return
        index = index_of(body)
        if index not in recorded:
            self.jobs.setdefault(index, JobState.from_body(body))

    def seed_pod(self, body: dict[str, Any], recorded: Container[int]) -> None:
        result = PodResult.from_body(body)
        if result is None or not self.current(body):
            return
        if role_of(body) == Role.REDUCE:
            self._spend(None, body, result)
            self.reduce_pod = self.reduce_pod or result
            return
        index = index_of(body)
        if index in recorded:
            return
        self._spend(index, body, result)
        if not (index in self.pods and self.pods[index].succeeded):
            self.pods[index] = result

    def _spend(self, index: int | None, body: dict[str, Any], result: PodResult) -> None:
        usage = result.usage
        if usage is None:
            return
        name = body["metadata"].get("name", "")
        spent = self.reduce_spent if index is None else self.spent.setdefault(index, {})
        spent[name] = usage

    def usage_of(self, index: int | None) -> dict[str, Any] | None:
        """What every pod of a subtask (None: of the reduce) spent, as one usage."""
        spent = self.reduce_spent if index is None else self.spent.get(index, {})
        if spent:
            return merged(spent.values())
        # Pods set directly (the local runner's): the last one's own report.
        pod = self.reduce_pod if index is None else self.pods.get(index)
        return pod.usage if pod else None

    def lose(self, index: int) -> None:
        """This subtask has no Job any more (or never got one): it must be created again."""
        self.jobs.pop(index, None)
        self.cursor = min(self.cursor, index)
        self.lost.add(index)

    def advance(self, to: int) -> None:
        """The creations a step decided have started: resume the window at `to`, or earlier
        where a Job was lost since that step decided."""
        self.cursor = min(to, *self.lost) if self.lost else to
        self.lost.clear()

    def forget_jobs_not_in(self, uids: set[str]) -> bool:
        """After a relist: Jobs tracked but not listed are gone. True when any was."""
        gone = [i for i, j in self.jobs.items() if j.uid and j.uid not in uids]
        for i in gone:
            self.lose(i)
        return bool(gone)

    def release(self, index: int) -> bool:
        """The outcome is stored: nothing about this subtask's children matters any more. True
        when its Job has no other subtask left to record (a packed chunk's last), so its TTL may run."""
        job = self.jobs.pop(index, None)
        self.pods.pop(index, None)
        self.attempts.pop(index, None)
        self.spent.pop(index, None)
        left = self.chunk_left.get(job.name) if job is not None else None
        if left is None:
            return True
        left.discard(index)
        if left:
            return False
        del self.chunk_left[job.name]
        self.chunk_seen.pop(job.name, None)
        return True

    def retry(self, index: int, attempt: int) -> None:
        """A retry reset this subtask: only `attempt`'s children count now, and it needs a Job.
        What its earlier pods spent went into its earlier outcome already."""
        self.attempts[index] = attempt
        self.pods.pop(index, None)
        self.spent.pop(index, None)
        self.lose(index)

    def clear(self) -> None:
        self.chunk_seen.clear()
        self.chunk_left.clear()
        self.jobs.clear()
        self.pods.clear()
        self.attempts.clear()
        self.spent.clear()
