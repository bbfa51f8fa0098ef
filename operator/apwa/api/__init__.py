"""The ParallelWorkload API: pydantic models are the single source of truth (the CRD is generated)."""

from apwa.api.models import (
    ConfigMapSource,
    Decomposition,
    FailurePolicy,
    Isolation,
    JobTemplate,
    ParallelWorkload,
    ParallelWorkloadSpec,
    ParallelWorkloadStatus,
    PlannerSpec,
    RangeSpec,
    ShardsSpec,
)

__all__ = [
    "ConfigMapSource",
    "Decomposition",
    "FailurePolicy",
    "Isolation",
    "JobTemplate",
    "ParallelWorkload",
    "ParallelWorkloadSpec",
    "ParallelWorkloadStatus",
    "PlannerSpec",
    "RangeSpec",
    "ShardsSpec",
]
