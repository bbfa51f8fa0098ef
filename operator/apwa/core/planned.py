"""From a spec (and the data a data-driven strategy fetched) to a plan that is known to render."""

from __future__ import annotations

from typing import Any

from apwa.api.models import ParallelWorkloadSpec
from apwa.api.vocabulary import Reason
from apwa.core.decide import Stalled
from apwa.planning import PlanningError, Subtask, plan
from apwa.rendering import Owner, RenderError, render_job


def make_plan(spec: ParallelWorkloadSpec, data: Any, max_subtasks: int, owner: Owner) -> list[Subtask]:
    """The subtasks, or Stalled with a message to act on.

    One Job per template is rendered now, so that a template or placeholder problem shows
    before the first Job rather than halfway through the run."""
    try:
        subtasks = plan(spec, data=data, max_subtasks=max_subtasks)
        seen: set[str] = set()
        for s in subtasks:
            if s.template not in seen:
                seen.add(s.template)
                render_job(owner, spec, s, len(subtasks))
    except (PlanningError, RenderError) as e:
        raise stall_of(e) from None
    return subtasks


def stall_of(e: PlanningError | RenderError) -> Stalled:
    """A planning or rendering problem as the stall that reports it."""
    if isinstance(e, RenderError):
        return Stalled(Reason.INVALID_TEMPLATE, str(e), retry=300)
    return Stalled(Reason.PLANNING_FAILED, str(e))
