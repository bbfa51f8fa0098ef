"""The controller's decisions: pure functions from what is known (spec, plan, children,
recorded outcomes, previous status, the time) to the next status and the actions that get
there. The operator (controller/) executes the actions against the API server, the local
runner (local/) against processes; neither decides anything on its own.
"""

from apwa.core.actions import (
    Action,
    CreateJobs,
    DeleteWorkload,
    HoldQueuedJobs,
    PatchStatus,
    PostEvent,
    RecordOutcomes,
    ReleaseJobs,
    Reset,
    ResetOutcomes,
    StartReduce,
    Step,
    SuspendJobs,
    WriteStatus,
)
from apwa.core.children import ChildIndex, JobState, PodResult, holds_result, outcome_of
from apwa.core.decide import (
    MAX_CREATING,
    POD_GRACE_SECONDS,
    RESYNC_SECONDS,
    Stalled,
    World,
    collect,
    decide,
    event_message,
    finished,
    planning_status,
    read_spec,
    stalled,
    without_times,
)
from apwa.core.planned import make_plan, stall_of
from apwa.core.retry import accept as accept_retry
from apwa.core.retry import observed as retry_observed
from apwa.core.retry import requested as retry_requested
from apwa.core.tally import Tally

__all__ = [
    "MAX_CREATING",
    "POD_GRACE_SECONDS",
    "RESYNC_SECONDS",
    "Action",
    "ChildIndex",
    "CreateJobs",
    "DeleteWorkload",
    "HoldQueuedJobs",
    "JobState",
    "PatchStatus",
    "PodResult",
    "PostEvent",
    "RecordOutcomes",
    "ReleaseJobs",
    "Reset",
    "ResetOutcomes",
    "Stalled",
    "StartReduce",
    "Step",
    "SuspendJobs",
    "Tally",
    "World",
    "WriteStatus",
    "accept_retry",
    "collect",
    "decide",
    "event_message",
    "finished",
    "holds_result",
    "make_plan",
    "outcome_of",
    "planning_status",
    "read_spec",
    "retry_observed",
    "retry_requested",
    "stall_of",
    "stalled",
    "without_times",
]
