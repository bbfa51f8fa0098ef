"""Subtask + template -> Kubernetes manifests (Jobs, NetworkPolicy). Pure."""

from apwa.rendering.jobs import (
    ANNOTATION_HELD,
    DEFAULT_SIDECAR_IMAGE,
    LABEL_ATTEMPT,
    LABEL_INDEX,
    LABEL_KUEUE_QUEUE,
    LABEL_ROLE,
    LABEL_UID,
    LABEL_WORKLOAD,
    RESULT_FINALIZER,
    RESULT_PATH,
    RESULTS_MOUNT,
    STORE_SIDECAR,
    Owner,
    RenderError,
    render_job,
    render_reduce_job,
    without_result_finalizer,
)
from apwa.rendering.names import attempt_suffix, child_name, job_name, label_value
from apwa.rendering.netpol import render_network_policy
from apwa.rendering.placeholders import substitute

__all__ = [
    "ANNOTATION_HELD",
    "DEFAULT_SIDECAR_IMAGE",
    "LABEL_ATTEMPT",
    "LABEL_INDEX",
    "LABEL_KUEUE_QUEUE",
    "LABEL_ROLE",
    "LABEL_UID",
    "LABEL_WORKLOAD",
    "RESULTS_MOUNT",
    "RESULT_FINALIZER",
    "RESULT_PATH",
    "STORE_SIDECAR",
    "Owner",
    "RenderError",
    "attempt_suffix",
    "child_name",
    "job_name",
    "label_value",
    "render_job",
    "render_network_policy",
    "render_reduce_job",
    "substitute",
    "without_result_finalizer",
]
