"""Retrying failed subtasks: which ones a request resets, and the status that says so.

A request is `spec.retry.attempt`; `status.retry.attempt` is the last one accepted, so applying
the same request twice (a re-sync by GitOps, `apwa retry` run twice before the operator saw the
first) is accepted once. Accepting is one step: the chosen failures are un-recorded (in the store
each becomes a pending entry that keeps its attempt and the failure it replaces, so an operator
restarted before the status is written finds them again and accepts the same retry), then the
status goes back to Running with the retry in its bounded history. The next steps create the
Jobs, named for the attempt (`<workload>-<index>-r<attempt>`), and run the reduce again.

What the failure budget counts is the failures recorded now: retried ones stop counting when they
are reset, so a workload that failed on its budget runs on (subtasks it never started included).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from apwa.api.models import ParallelWorkloadSpec
from apwa.api.vocabulary import EventType, Phase, Reason
from apwa.common.times import format_iso
from apwa.core.actions import Action, PatchStatus, PostEvent, Reset, ResetOutcomes, Step, WriteStatus
from apwa.core.decide import RESYNC_SECONDS, World
from apwa.results import Aggregate
from apwa.results.aggregate import FAILED_LIST_CAP, failure_entry
from apwa.status import build

# status.retry.history: the last HISTORY_ROUNDS retries, each with its first HISTORY_FAILURES
# reset failures (messages shortened), so the status stays bounded however often one retries.
HISTORY_ROUNDS = 5
HISTORY_FAILURES = 10
HISTORY_MESSAGE_CAP = 256


def observed(status: Mapping[str, Any]) -> int:
    """The last retry accepted (0: none)."""
    return int((status.get("retry") or {}).get("attempt") or 0)


def requested(spec: ParallelWorkloadSpec, status: Mapping[str, Any]) -> int | None:
    """The attempt of a retry asked for and not accepted yet, or None."""
    r = spec.retry
    return r.attempt if r is not None and r.attempt > observed(status) else None


@dataclass(frozen=True, slots=True)
class Selection:
    resets: tuple[Reset, ...]  # recorded failures to un-record now
    again: tuple[Reset, ...]  # reset by this attempt already (before a restart), not run yet
    skipped_final: int = 0
    ignored: int = 0

    @property
    def count(self) -> int:
        return len(self.resets) + len(self.again)


def select(spec: ParallelWorkloadSpec, outcomes: Aggregate, pending: Mapping[int, Reset], attempt: int) -> Selection:
    """The failures this retry runs again: those named by spec.retry.indices, or every one that
    did not report a final failure (the worker said running it again cannot help)."""
    wanted = set(spec.retry.indices) if spec.retry and spec.retry.indices is not None else None
    resets: list[Reset] = []
    skipped = 0
    for i in outcomes.failed_indices:
        if wanted is not None and i not in wanted:
            continue
        o = outcomes.outcomes[i]
        if wanted is None and o.reason == Reason.FINAL:
            skipped += 1
            continue
        resets.append(Reset(i, attempt, failure_entry(o), o.usage))
    again = tuple(sorted((r for r in pending.values() if r.attempt == attempt), key=lambda r: r.index))
    ignored = len(wanted - {r.index for r in resets} - {r.index for r in again}) if wanted is not None else 0
    return Selection(tuple(resets), again, skipped, ignored)


class AfterReset:
    """The recorded outcomes as they are once `reset` are un-recorded (a status.Tallied)."""

    def __init__(self, outcomes: Aggregate, reset: set[int]) -> None:
        self.outcomes, self.reset = outcomes, reset

    @property
    def succeeded(self) -> int:
        return self.outcomes.succeeded

    @property
    def failed(self) -> int:
        return self.outcomes.failed - len(self.reset)

    def failures(self, cap: int = FAILED_LIST_CAP) -> list[dict[str, Any]]:
        kept: Iterator[int] = (i for i in self.outcomes.failed_indices if i not in self.reset)
        return [failure_entry(self.outcomes.outcomes[i]) for i in islice(kept, cap)]


def accept(w: World, attempt: int, pending: Mapping[int, Reset], now: float) -> Step:
    """Accept retry `attempt`: reset what it retries and go back to Running; or, with nothing
    to run again, only note that it was observed."""
    sel = select(w.spec, w.outcomes, pending, attempt)
    prev = w.previous
    history = [*((prev.get("retry") or {}).get("history") or []), _round(sel, attempt, now)]
    retry = {"attempt": attempt, "history": history[-HISTORY_ROUNDS:]}
    reduce_again = prev.get("phase") == Phase.FAILED and w.outcomes.failed <= w.spec.failure.allowed(len(w.plan))
    message = _message(sel, attempt, reduce_again and not sel.count)
    if not sel.count and not reduce_again:
        patch: dict[str, Any] = {"retry": retry}
        if w.generation is not None:  # kstatus readers wait for this generation to be observed
            patch["observedGeneration"] = w.generation
            patch["conditions"] = [{**c, "observedGeneration": w.generation} for c in prev.get("conditions") or []]
        return Step((PatchStatus(patch), PostEvent(EventType.NORMAL, Reason.RETRYING, message)), RESYNC_SECONDS)
    reset = {r.index for r in sel.resets}
    active = sum(1 for i, j in w.children.jobs.items() if not j.finished and i not in w.outcomes.outcomes)
    status = build(
        phase=Phase.SUSPENDED if w.spec.suspend else Phase.RUNNING,
        reason=Reason.RETRYING,
        message=message,
        generation=w.generation,
        total=len(w.plan),
        active=active,
        agg=AfterReset(w.outcomes, reset),
        previous=dict(prev),
        start_time=prev.get("startTime") or format_iso(now),
        results_ref=w.results_ref,
        retry=retry,
        now=format_iso(now),
    )
    actions: tuple[Action, ...] = (
        ResetOutcomes(sel.resets, attempt),
        WriteStatus(status, final=True),
        PostEvent(EventType.NORMAL, Reason.RETRYING, message),
    )
    return Step(actions, wake_in=0.0)


def _round(sel: Selection, attempt: int, now: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"attempt": attempt, "time": format_iso(now), "retried": sel.count}
    if sel.skipped_final:
        entry["skippedFinal"] = sel.skipped_final
    if sel.ignored:
        entry["ignored"] = sel.ignored
    firsts = sorted((*sel.resets, *sel.again), key=lambda r: r.index)[:HISTORY_FAILURES]
    if firsts:
        entry["failures"] = [{**r.was, "message": _short(r.was.get("message", ""))} for r in firsts]
    return entry


def _short(message: str) -> str:
    return message if len(message) <= HISTORY_MESSAGE_CAP else message[: HISTORY_MESSAGE_CAP - 3] + "..."


def _message(sel: Selection, attempt: int, reduce_only: bool) -> str:
    if reduce_only:
        text = f"retry {attempt}: no failed subtask to run again; the reduce step runs again"
    elif sel.count:
        text = f"retry {attempt}: running {sel.count} failed subtasks again"
    else:
        text = f"retry {attempt}: nothing to run again"
    if sel.skipped_final:
        text += (
            f"; {sel.skipped_final} reported a final failure and were left alone "
            "(name them in spec.retry.indices, apwa retry --index, to run them anyway)"
        )
    if sel.ignored:
        text += f"; {sel.ignored} of spec.retry.indices had not failed and were left alone"
    return text
