"""What the core asks its executor to do, in the order it must be done.

The operator executes these against the API server, the local runner against processes.
Order matters and is the list's: outcomes are stored before their Jobs are released (a TTL
must never delete a Job whose result is not stored yet), the status is written once, and
events are posted only after that write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apwa.api.vocabulary import EventType, Reason
from apwa.results import SubtaskOutcome


@dataclass(frozen=True, slots=True)
class RecordOutcomes:
    """Record and durably store these outcomes (finished subtasks not recorded before)."""

    outcomes: tuple[SubtaskOutcome, ...]


@dataclass(frozen=True, slots=True)
class Reset:
    """One failed subtask a retry runs again: its index, the attempt, the failure it replaces
    (as status.failedSubtasks lists it) and what that failure's pods spent."""

    index: int
    attempt: int
    was: dict[str, Any]
    usage: dict[str, Any] | None = None  # what the earlier attempts' agents spent: spent stays spent


@dataclass(frozen=True, slots=True)
class ResetOutcomes:
    """A retry was accepted: un-record these failures, durably (the store keeps each as pending
    for `attempt`), before the status that says so is written. Their next Jobs are `attempt`'s."""

    resets: tuple[Reset, ...]
    attempt: int


@dataclass(frozen=True, slots=True)
class ReleaseJobs:
    """Outcomes stored: forget these subtasks' children, and only now let each Job's TTL run.
    Entries are (index, Job name, ttlSecondsAfterFinished or None)."""

    jobs: tuple[tuple[int, str, int | None], ...]


@dataclass(frozen=True, slots=True)
class SuspendJobs:
    """Follow spec.suspend: suspend these unfinished Jobs and mark them held (ANNOTATION_HELD), or
    unsuspend these held Jobs and unmark them. Entries (index, Job name). Only Jobs not Kueue's:
    see HoldQueuedJobs."""

    jobs: tuple[tuple[int, str], ...]
    suspend: bool


@dataclass(frozen=True, slots=True)
class HoldQueuedJobs:
    """Follow spec.suspend for Kueue's Jobs: deactivate (hold) or reactivate their Kueue Workloads
    (spec.active), then mark or unmark the Jobs held. Never the Jobs' own spec.suspend: Kueue
    unsuspends an admitted Job that is suspended directly, and only Kueue may unsuspend a Job it
    queued. Entries (index, Job name); a Job whose Workload Kueue has not made yet stays unmarked,
    so a later step tries again."""

    jobs: tuple[tuple[int, str], ...]
    hold: bool


@dataclass(frozen=True, slots=True)
class CreateJobs:
    """Create the Jobs of these subtasks (in this order); the window stays within parallelism.
    Once they are started, the next window resumes at `resume_at` (ChildIndex.advance)."""

    indices: tuple[int, ...]
    resume_at: int


@dataclass(frozen=True, slots=True)
class StartReduce:
    """Every subtask finished within the failure budget: hand all results to the reduce Job."""


@dataclass(frozen=True, slots=True)
class WriteStatus:
    """Write the whole status. `final` statuses go out at once, ignoring the write interval."""

    status: dict[str, Any]
    final: bool = False


@dataclass(frozen=True, slots=True)
class PatchStatus:
    """Merge-patch part of the status of a finished workload (observedGeneration)."""

    patch: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PostEvent:
    type: EventType
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class DeleteWorkload:
    """spec.ttlSecondsAfterFinished has passed."""


Action = (
    RecordOutcomes
    | ResetOutcomes
    | ReleaseJobs
    | SuspendJobs
    | HoldQueuedJobs
    | CreateJobs
    | StartReduce
    | WriteStatus
    | PatchStatus
    | PostEvent
    | DeleteWorkload
)


@dataclass(frozen=True, slots=True)
class Step:
    """The core's answer: actions to execute in order, and how soon to look again even if
    nothing happens (late pods, TTLs, resyncs)."""

    actions: tuple[Action, ...] = ()
    wake_in: float = 0.0

    def of(self, kind: type[Action]) -> list[Any]:
        """The actions of one kind (for executors that batch, and for tests)."""
        return [a for a in self.actions if isinstance(a, kind)]
