"""Pure construction of a workload's status: phase, counts and kstatus-style conditions.

Conditions follow the kstatus conventions that Argo CD health checks and Flux read:
`Reconciling` while work is in progress, `Stalled` when it cannot go on (bad spec, failed
workload), `Ready` when it succeeded; plus `Complete` and `Failed` so that
`kubectl wait --for=condition=Complete` works as it does for Jobs.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from apwa.api.vocabulary import FINISHED, IN_PROGRESS, ConditionType, Phase, Reason
from apwa.common.times import format_iso

__all__ = ["FINISHED", "IN_PROGRESS", "build", "conditions", "counts", "is_finished", "now_iso"]
MESSAGE_CAP = 1024


class Tallied(Protocol):
    """What the status needs of the outcomes: an `Aggregate`, or the core's view of one."""

    @property
    def succeeded(self) -> int: ...

    @property
    def failed(self) -> int: ...

    def failures(self) -> list[dict[str, Any]]: ...


def now_iso() -> str:
    return format_iso(time.time())


def is_finished(status: dict[str, Any]) -> bool:
    """Finished for good: a final phase with its completion time written."""
    return status.get("phase") in FINISHED and bool(status.get("completionTime"))


def _condition(
    ctype: ConditionType,
    value: bool,
    reason: str,
    message: str,
    generation: int | None,
    previous: dict[str, dict[str, Any]],
    now: str,
) -> dict[str, Any]:
    status = "True" if value else "False"
    old = previous.get(ctype)
    changed = not old or old.get("status") != status
    cond = {
        "type": str(ctype),  # plain strings: YAML dumpers don't know the enums
        "status": status,
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),  # type: ignore[union-attr]
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def conditions(
    phase: str,
    *,
    reason: str,
    message: str,
    generation: int | None,
    previous: list[dict[str, Any]] | None = None,
    stalled: bool = False,
    now: str | None = None,
) -> list[dict[str, Any]]:
    now = now or now_iso()
    prev = {c.get("type", ""): c for c in previous or []}
    failed = phase == Phase.FAILED
    done = phase == Phase.SUCCEEDED
    progressing = phase in IN_PROGRESS and not stalled
    blocked = stalled or failed
    args = (generation, prev, now)
    return [
        _condition(ConditionType.READY, done, reason, message, *args),
        _condition(
            ConditionType.RECONCILING,
            progressing,
            reason if progressing else Reason.IDLE,
            message if progressing else "",
            *args,
        ),
        _condition(
            ConditionType.STALLED, blocked, reason if blocked else Reason.HEALTHY, message if blocked else "", *args
        ),
        _condition(
            ConditionType.COMPLETE, done, reason if done else Reason.NOT_COMPLETE, message if done else "", *args
        ),
        _condition(
            ConditionType.FAILED, failed, reason if failed else Reason.NOT_FAILED, message if failed else "", *args
        ),
    ]


def counts(total: int, active: int, agg: Tallied | None, awaiting_admission: int = 0) -> dict[str, int]:
    """`active` excludes the Jobs awaiting admission by Kueue: those count as pending (and apart)."""
    succeeded = agg.succeeded if agg else 0
    failed = agg.failed if agg else 0
    return {
        "total": total,
        "pending": max(total - active - succeeded - failed, 0),
        "active": active,
        "succeeded": succeeded,
        "failed": failed,
        "awaitingAdmission": awaiting_admission,
    }


def build(
    *,
    phase: str,
    reason: str,
    message: str,
    generation: int | None,
    total: int,
    active: int,
    agg: Tallied | None,
    awaiting_admission: int = 0,
    previous: dict[str, Any] | None = None,
    stalled: bool = False,
    start_time: str | None = None,
    completion_time: str | None = None,
    result: Any = None,
    results_ref: dict[str, Any] | None = None,
    retry: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """The whole status. `retry` (status.retry) is carried over from `previous` unless given."""
    previous = previous or {}
    usage = usage if usage is not None else previous.get("usage")  # spent stays spent (e.g. while stalled)
    c = counts(total, active, agg, awaiting_admission)
    status: dict[str, Any] = {
        "phase": str(phase),
        "progress": f"{c['succeeded']}/{total}",
        "counts": c,
        "message": message[:MESSAGE_CAP],
        "conditions": conditions(
            phase,
            reason=reason,
            message=message[:MESSAGE_CAP],
            generation=generation,
            previous=previous.get("conditions"),
            stalled=stalled,
            now=now,
        ),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if start_time:
        status["startTime"] = start_time
    if completion_time:
        status["completionTime"] = completion_time
    if agg is not None and agg.failed:
        status["failedSubtasks"] = agg.failures()
    if result is not None:
        status["result"] = result
    if results_ref:
        status["resultsRef"] = results_ref
    retry = retry if retry is not None else previous.get("retry")
    if retry:
        status["retry"] = retry
    if usage:
        status["usage"] = usage
    status["conditions"] = status.pop("conditions")  # last: the long part of `kubectl get -o yaml`
    return status
