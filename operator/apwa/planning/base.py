from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_SUBTASKS = 100_000


class PlanningError(ValueError):
    """A spec (or its data) that can't be turned into subtasks. `field` names where to look."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Subtask:
    index: int
    item: Any
    template: str
