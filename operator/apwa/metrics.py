"""Prometheus metrics of the operator (served on /metrics beside /healthz and /readyz)."""

from prometheus_client import Counter, Gauge, Histogram

WORKLOADS = Gauge("apwa_workloads", "ParallelWorkloads known to this operator, by phase", ["phase"])
SUBTASKS_CREATED = Counter("apwa_subtasks_created_total", "Subtask Jobs created")
SUBTASKS_SUCCEEDED = Counter("apwa_subtasks_succeeded_total", "Subtasks that succeeded")
SUBTASKS_FAILED = Counter("apwa_subtasks_failed_total", "Subtasks that failed")
SUBTASKS_RETRIED = Counter("apwa_subtasks_retried_total", "Failed subtasks a retry (spec.retry) ran again")
JOB_CREATE_SECONDS = Histogram(
    "apwa_job_create_seconds",
    "Latency of one Job creation request, retries included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WORKLOAD_SECONDS = Histogram(
    "apwa_workload_duration_seconds",
    "Time from a workload's creation to its completion",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
API_ERRORS = Counter("apwa_api_errors_total", "Kubernetes API errors by HTTP status", ["code"])
API_RETRIES = Counter("apwa_api_retries_total", "Kubernetes API requests retried")
POD_RELEASES = Counter("apwa_pod_releases_total", "Pods whose apwa.dev/result finalizer the operator removed")
STATUS_PATCHES = Counter("apwa_status_patches_total", "Status writes to ParallelWorkloads")
WATCH_LAG = Histogram(
    "apwa_watch_event_lag_seconds",
    "Time from a Job finishing (its completion or failure time) to the operator seeing it",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
