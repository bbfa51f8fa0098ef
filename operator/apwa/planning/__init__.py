"""spec.decomposition -> an ordered list of Subtasks. Pure: no network, no clock, no randomness.

Same spec (and, for data-driven strategies, same data) always yields the same subtasks in the
same order; the operator relies on that to name Jobs and to survive restarts.
"""

from apwa.planning.base import DEFAULT_MAX_SUBTASKS, PlanningError, Subtask
from apwa.planning.plan import plan, plan_count

__all__ = ["DEFAULT_MAX_SUBTASKS", "PlanningError", "Subtask", "plan", "plan_count"]
