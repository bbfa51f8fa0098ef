"""Small builders for the core's tables: a spec, children, outcomes, a World, in a line each."""

from __future__ import annotations

from typing import Any

from apwa.api.models import ParallelWorkloadSpec
from apwa.core import ChildIndex, JobState, PodResult, World
from apwa.planning import plan
from apwa.results import Aggregate, SubtaskOutcome

NOW = 1_800_000_000.0  # a fixed "now": the core never reads the clock
LONG_AGO = NOW - 600  # finished long before now: past any grace period
NAME = "w"
POD = {"spec": {"containers": [{"name": "main", "image": "i", "command": ["true"]}]}}


def spec(
    n: int = 10,
    *,
    parallelism: int = 3,
    suspend: bool = False,
    max_failed: int | None = None,
    ratio: float | None = None,
    reduce: bool = False,
    ttl: int | None = None,
    job_ttl: int | None = None,
    templates: dict[str, int | None] | None = None,
) -> ParallelWorkloadSpec:
    """A range workload of n subtasks. `templates` adds templates (name -> Job TTL) used by items."""
    body: dict[str, Any] = {
        "decomposition": {"range": {"end": n}},
        "parallelism": parallelism,
        "suspend": suspend,
        "templates": {"default": {"podTemplate": POD, "ttlSecondsAfterFinished": job_ttl}},
    }
    if templates:
        items = [{"template": name} for name in templates for _ in range(n // len(templates))]
        body["decomposition"] = {"items": items}
        body["templates"].update({t: {"podTemplate": POD, "ttlSecondsAfterFinished": v} for t, v in templates.items()})
    if max_failed is not None or ratio is not None:
        body["failurePolicy"] = {"maxFailedSubtasks": max_failed, "maxFailedRatio": ratio}
    if reduce:
        body["results"] = {"reduce": {"template": "default"}}
    if ttl is not None:
        body["ttlSecondsAfterFinished"] = ttl
    return ParallelWorkloadSpec.model_validate(body)


def running(i: int, *, suspended: bool = False, held: bool = False) -> JobState:
    """An unfinished Job; `held`: suspended by spec.suspend (ANNOTATION_HELD)."""
    return JobState(name=f"{NAME}-{i}", suspended=suspended, uid=f"uid-{i}", held=held)


def queued(i: int, *, admitted: bool = False, held: bool = False) -> JobState:
    """An unfinished Job of Kueue's (queue label): suspended until Kueue admits it."""
    return JobState(name=f"{NAME}-{i}", suspended=not admitted, uid=f"uid-{i}", queued=True, held=held)


def done(i: int, *, at: float = LONG_AGO) -> JobState:
    return JobState(f"{NAME}-{i}", finished=True, succeeded=True, reason="Complete", finished_at=at, uid=f"uid-{i}")


def failed(i: int, *, reason: str = "BackoffLimitExceeded", message: str = "", at: float = LONG_AGO) -> JobState:
    return JobState(f"{NAME}-{i}", finished=True, reason=reason, message=message, finished_at=at, uid=f"uid-{i}")


def pod_ok(message: str = '"r"', budget: int | None = None) -> PodResult:
    return PodResult("Succeeded", 0, "Completed", message, budget)


def pod_failed(code: int = 1, message: str = "boom") -> PodResult:
    return PodResult("Failed", code, "Error", message)


def ok(i: int, result: Any = "r") -> SubtaskOutcome:
    return SubtaskOutcome(i, True, result=result, job=f"{NAME}-{i}")


def bad(i: int, message: str = "no") -> SubtaskOutcome:
    return SubtaskOutcome(i, False, reason="BackoffLimitExceeded", message=message, exit_code=1, job=f"{NAME}-{i}")


def aggregate(total: int, outcomes: list[SubtaskOutcome]) -> Aggregate:
    agg = Aggregate(total=total)
    for o in outcomes:
        agg.record(o)
    return agg


def world(
    s: ParallelWorkloadSpec | None = None,
    *,
    jobs: dict[int, JobState] | None = None,
    pods: dict[int, PodResult] | None = None,
    outcomes: list[SubtaskOutcome] | None = None,
    creating: tuple[int, ...] = (),
    cursor: int = 0,
    reduce_job: JobState | None = None,
    reduce_pod: PodResult | None = None,
    previous: dict[str, Any] | None = None,
    generation: int | None = 1,
) -> World:
    s = s or spec()
    subtasks = plan(s)
    children = ChildIndex(dict(jobs or {}), dict(pods or {}), reduce_job, reduce_pod, cursor)
    return World(
        spec=s,
        plan=subtasks,
        children=children,
        outcomes=aggregate(len(subtasks), outcomes or []),
        previous=previous or {},
        generation=generation,
        creating=creating,
        results_ref=None,
    )


def all_ok(n: int) -> list[SubtaskOutcome]:
    return [ok(i) for i in range(n)]
