"""The interface a dynamic planner implements (an HTTP decomposer or an LLM).

A planner runs once per workload: the operator stores its answer (owned by the workload)
before creating any Job and plans from the stored items ever after, so a restart never asks
again and the plan stays deterministic.
"""

from __future__ import annotations

from typing import Any, Protocol

from apwa.api.models import PlannerSpec


class Planner(Protocol):
    async def plan(self, spec: PlannerSpec, *, workload: str, context: str | None) -> list[Any]:
        """Return the subtask items (JSON values), at most spec.max_subtasks of them."""
        ...
