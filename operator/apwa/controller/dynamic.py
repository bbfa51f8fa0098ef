"""The operator side of dynamic plans (stored before the first Job, never recomputed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apwa.api.models import ParallelWorkloadSpec
from apwa.planning.base import PlanningError

if TYPE_CHECKING:
    from apwa.controller.workload import WorkloadRunner


async def stored_plan(runner: WorkloadRunner, spec: ParallelWorkloadSpec) -> list[Any]:
    raise PlanningError("spec.decomposition.planner", "dynamic planners are not implemented in this version")
