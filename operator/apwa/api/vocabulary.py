"""The words of the API: phases, reasons, condition types, child roles, event types.

Enums, so that a word is typed once and a typo fails at import rather than in a status that
no client recognises (kopf's `Reason` enum exists for the same reason). They are `StrEnum`s:
each member is its own string value, so they compare equal to what the API server returns and
serialise as plain strings. `models.Phase` (the CRD's enum) is kept equal to `Phase` by a test.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    PENDING = "Pending"
    PLANNING = "Planning"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    REDUCING = "Reducing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


IN_PROGRESS = frozenset({Phase.PENDING, Phase.PLANNING, Phase.RUNNING, Phase.REDUCING})
FINISHED = frozenset({Phase.SUCCEEDED, Phase.FAILED})
# A stalled workload keeps these phases (it was doing something); any other shows as Pending.
KEPT_WHEN_STALLED = frozenset({Phase.RUNNING, Phase.SUSPENDED, Phase.REDUCING})


class Reason(StrEnum):
    """Reasons of conditions and events (CamelCase, as Kubernetes writes them)."""

    # progress
    PLANNING = "Planning"
    PLANNED = "Planned"
    SUBTASKS_RUNNING = "SubtasksRunning"
    SUSPENDED = "Suspended"
    REDUCING = "Reducing"
    RETRYING = "Retrying"  # spec.retry was accepted: failed subtasks run again
    # outcomes
    ALL_SUBTASKS_FINISHED = "AllSubtasksFinished"
    REDUCED = "Reduced"
    TOO_MANY_FAILURES = "TooManyFailures"
    TOKEN_BUDGET_EXHAUSTED = "TokenBudgetExhausted"  # spec.agent.maxTotalTokens spent: nothing new starts
    REDUCE_FAILED = "ReduceFailed"
    RESULT_TRUNCATED = "ResultTruncated"  # a subtask's or the reduce's message was cut by the kubelet
    RESULT_INVALID = "ResultInvalid"  # whole, but not a result the status can hold (NaN, 1e400, too deep)
    RESULT_LOST = "ResultLost"  # a Job succeeded but its pod was gone before its message was read
    FINAL = "Final"  # the worker said retrying cannot help (apwa.worker.fail(..., final=True))
    STORE_FAILED = "StoreFailed"  # the store sidecar could not upload a subtask's result
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    # stalls: the workload can't go on until a person changes something
    INVALID_SPEC = "InvalidSpec"
    PLANNING_FAILED = "PlanningFailed"
    INVALID_TEMPLATE = "InvalidTemplate"
    JOB_REJECTED = "JobRejected"
    FORBIDDEN = "Forbidden"
    NAME_CONFLICT = "NameConflict"
    STORE_UNAVAILABLE = "StoreUnavailable"  # network or server errors: waits and resumes by itself
    STORE_ACCESS_DENIED = "StoreAccessDenied"  # the Secret is missing, unreadable, or its keys refused
    STORE_NOT_FOUND = "StoreNotFound"  # no such bucket
    KUEUE_UNAVAILABLE = "KueueUnavailable"  # Jobs carry a Kueue queue label, but Kueue's API is not served
    # the resting reasons of conditions that are False
    IDLE = "Idle"
    HEALTHY = "Healthy"
    NOT_COMPLETE = "NotComplete"
    NOT_FAILED = "NotFailed"


class ConditionType(StrEnum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    COMPLETE = "Complete"
    FAILED = "Failed"


class Role(StrEnum):
    """Value of the role label on everything a workload owns."""

    SUBTASK = "subtask"
    REDUCE = "reduce"
    REDUCE_INPUT = "reduce-input"
    RESULTS = "results"
    PLAN = "plan"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"
