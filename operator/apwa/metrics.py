"""Prometheus metrics of the operator (served on /metrics beside /healthz and /readyz)."""

import contextlib
from collections.abc import Mapping
from typing import Any

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
LEADER = Gauge("apwa_leader", "1 while this replica holds the leader Lease (or runs without election), else 0")
API_ERRORS = Counter("apwa_api_errors_total", "Kubernetes API errors by HTTP status", ["code"])
API_RETRIES = Counter("apwa_api_retries_total", "Kubernetes API requests retried")
API_REQUESTS = Counter(
    "apwa_api_requests_total", "Kubernetes API requests sent, each retry included (watches not)", ["verb"]
)
POD_RELEASES = Counter("apwa_pod_releases_total", "Pods whose apwa.dev/result finalizer the operator removed")
STATUS_PATCHES = Counter("apwa_status_patches_total", "Status writes to ParallelWorkloads")
WATCH_LAG = Histogram(
    "apwa_watch_event_lag_seconds",
    "Time from a Job finishing (its completion or failure time) to the operator seeing it",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
API_REACHABLE = Gauge(
    "apwa_api_reachable",
    "1 while every watch of the operator is connected to the API server, 0 while any reconnects",
)
WATCH_CONNECTED = Gauge("apwa_watch_connected", "1 while this watch is listed and streaming", ["watch"])
WATCH_RESTARTS = Counter(
    "apwa_watch_restarts_total", "Watch streams restarted, by watch and reason", ["watch", "reason"]
)
KOPF_RESTARTS = Counter("apwa_kopf_restarts_total", "Times kopf stopped on an error and the operator started it again")

# What the agents spent (docs/agents.md, "Usage"): counted when a subtask's outcome is recorded
# (and the reduce's when the workload finishes), from the same envelopes as status.usage. One
# series per workload and model: removed when the workload is deleted, so they don't pile up.
# workload_namespace, not namespace: see WORKLOAD_LABELS below.
_AGENT_LABELS = ["workload_namespace", "workload", "model"]
AGENT_TOKENS = Counter("apwa_agent_tokens_total", "Tokens the model server reported, by kind", [*_AGENT_LABELS, "kind"])
AGENT_REQUESTS = Counter("apwa_agent_requests_total", "Model requests the agents made, retries included", _AGENT_LABELS)
AGENT_RETRIES = Counter("apwa_agent_retries_total", "Model requests that repeated one (429, 5xx)", _AGENT_LABELS)
AGENT_MODEL_SECONDS = Counter(
    "apwa_agent_model_seconds_total", "Seconds the agents spent waiting for the model", _AGENT_LABELS
)
_TOKEN_KINDS = (("prompt", "prompt_tokens"), ("completion", "completion_tokens"))


def count_usage(namespace: str, workload: str, model: str, usage: Mapping[str, Any] | None) -> None:
    if not usage:
        return
    labels = (namespace, workload, model)
    for kind, key in _TOKEN_KINDS:
        AGENT_TOKENS.labels(*labels, kind).inc(usage.get(key, 0))
    AGENT_REQUESTS.labels(*labels).inc(usage.get("requests", 0))
    AGENT_RETRIES.labels(*labels).inc(usage.get("retries", 0))
    AGENT_MODEL_SECONDS.labels(*labels).inc(usage.get("latency_seconds", 0.0))


def forget_usage(namespace: str, workload: str, model: str) -> None:
    labels = (namespace, workload, model)
    for kind, _ in _TOKEN_KINDS:
        with contextlib.suppress(KeyError):
            AGENT_TOKENS.remove(*labels, kind)
    for counter in (AGENT_REQUESTS, AGENT_RETRIES, AGENT_MODEL_SECONDS):
        with contextlib.suppress(KeyError):
            counter.remove(*labels)


# Per-workload series, for the alerts of docs/monitoring.md. Labelled by the workload's namespace
# and name (workload_namespace, not namespace: scraping through the chart's ServiceMonitor, Prometheus
# sets `namespace` to the operator pod's and renames a series' own to exported_namespace), and
# present only while the workload is in progress: a
# workload that finishes or is deleted loses its series, so their number is bounded by the
# workloads running at once, never by history.
WORKLOAD_LABELS = ["workload_namespace", "workload"]
WORKLOAD_LAST_PROGRESS = Gauge(
    "apwa_workload_last_progress_timestamp_seconds",
    "Unix time of the workload's last progress (planned, a Job created, a subtask finished, a phase "
    "changed); absent while suspended",
    WORKLOAD_LABELS,
)
WORKLOAD_FAILED = Gauge("apwa_workload_failed_subtasks", "Subtasks of the workload that failed", WORKLOAD_LABELS)
WORKLOAD_FAILURE_BUDGET = Gauge(
    "apwa_workload_failure_budget_subtasks",
    "Failed subtasks the workload tolerates (spec.failurePolicy); one more fails it",
    WORKLOAD_LABELS,
)


def _set_or_drop(gauge: Gauge, labels: tuple[str, str], value: float | None) -> None:
    if value is not None:
        gauge.labels(*labels).set(value)
        return
    with contextlib.suppress(KeyError):  # never set: nothing to remove
        gauge.remove(*labels)


def publish_workload(
    namespace: str, name: str, *, progress_at: float | None, failed: int | None, budget: int | None
) -> None:
    """Set one workload's series; None drops that series (not known yet, or not meaningful)."""
    labels = (namespace, name)
    _set_or_drop(WORKLOAD_LAST_PROGRESS, labels, progress_at)
    _set_or_drop(WORKLOAD_FAILED, labels, failed)
    _set_or_drop(WORKLOAD_FAILURE_BUDGET, labels, budget)


def forget_workload(namespace: str, name: str) -> None:
    """Drop every series of one workload (it finished or was deleted)."""
    publish_workload(namespace, name, progress_at=None, failed=None, budget=None)
