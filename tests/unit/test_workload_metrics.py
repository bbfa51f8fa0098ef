"""The per-workload series of apwa.metrics: set, dropped one by one, and dropped together.

What the controller does with them on a real workload is tests/integration/test_monitoring.py.
"""

from __future__ import annotations

import uuid

import pytest
from apwa import metrics
from prometheus_client import REGISTRY

NAMES = {
    "progress": "apwa_workload_last_progress_timestamp_seconds",
    "failed": "apwa_workload_failed_subtasks",
    "budget": "apwa_workload_failure_budget_subtasks",
}


def exported(ns: str, name: str) -> dict[str, float | None]:
    labels = {"workload_namespace": ns, "workload": name}
    return {key: REGISTRY.get_sample_value(metric, labels) for key, metric in NAMES.items()}


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ({"progress_at": 1.5e9, "failed": 2, "budget": 5}, {"progress": 1.5e9, "failed": 2, "budget": 5}),
        ({"progress_at": 1.5e9, "failed": None, "budget": None}, {"progress": 1.5e9, "failed": None, "budget": None}),
        ({"progress_at": None, "failed": 1, "budget": 0}, {"progress": None, "failed": 1, "budget": 0}),
    ],
    ids=["running", "not-planned-yet", "suspended"],
)
def test_publish_sets_and_drops(values: dict[str, float | None], want: dict[str, float | None]) -> None:
    ns, name = "team-a", f"w-{uuid.uuid4().hex[:6]}"
    metrics.publish_workload(ns, name, progress_at=3.0, failed=9, budget=9)  # all present before
    metrics.publish_workload(ns, name, **values)  # type: ignore[arg-type]
    assert exported(ns, name) == want


def test_forget_drops_every_series_and_only_that_workloads() -> None:
    ns, gone, kept = "team-a", f"w-{uuid.uuid4().hex[:6]}", f"w-{uuid.uuid4().hex[:6]}"
    for name in (gone, kept):
        metrics.publish_workload(ns, name, progress_at=1.0, failed=1, budget=2)
    metrics.forget_workload(ns, gone)
    metrics.forget_workload(ns, gone)  # twice: nothing left to drop is fine
    assert exported(ns, gone) == {"progress": None, "failed": None, "budget": None}
    assert exported(ns, kept) == {"progress": 1.0, "failed": 1, "budget": 2}
