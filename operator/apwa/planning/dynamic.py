"""Dynamic plans (HTTP decomposer / OpenAI-compatible model). The clients live in another change;
until then an offline plan explains what is missing."""

from __future__ import annotations

from typing import Any

from apwa.api.models import ParallelWorkload
from apwa.planning.base import PlanningError


def plan_offline(workload: ParallelWorkload) -> list[Any]:
    raise PlanningError("spec.decomposition.planner", "dynamic planners are not implemented in this version")
