"""The executor of HoldQueuedJobs (controller/kueue.py) against an in-memory API: the order of its
writes, what it does while Kueue has not made a Job's Workload yet, and the stalls it reports.
The integration tier (tests/integration/test_kueue.py) runs it against a real Kueue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from apwa.api.vocabulary import Reason
from apwa.controller import kueue
from apwa.controller.workload import Settings, WorkloadRunner
from apwa.core import RESYNC_SECONDS, JobState, Stalled
from apwa.kube.client import ApiError

WL_PATH = "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads"


class Recorder:
    """Kueue Workloads by name (owned by a Job uid); every PATCH in order; optional list error."""

    def __init__(self, workloads: dict[str, str], list_error: int | None = None) -> None:
        self.workloads = workloads  # Workload name -> Job uid
        self.list_error = list_error
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def list(self, path: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        assert path == WL_PATH and params["labelSelector"] == kueue.LABEL_JOB_UID
        if self.list_error:
            raise ApiError(self.list_error, {"reason": "x", "message": "no"}, "GET", path)
        for name, uid in self.workloads.items():
            yield {"metadata": {"name": name, "ownerReferences": [{"controller": True, "uid": uid}]}}

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1], body))
        return body


def runner(kube: Recorder, held: bool) -> WorkloadRunner:
    body = {"metadata": {"uid": "uid-w", "name": "w", "namespace": "ns"}, "spec": {}}
    r = WorkloadRunner(kube, body, Settings())  # type: ignore[arg-type]
    for i in (0, 1):
        r.children.jobs[i] = JobState(f"w-{i}", suspended=True, uid=f"uid-{i}", queued=True, held=held)
    return r


HELD, UNHELD = (
    {"metadata": {"annotations": {"apwa.dev/held": "true"}}},
    {"metadata": {"annotations": {"apwa.dev/held": None}}},
)
CASES = [
    # name, workloads (name -> job uid), hold, expected patches in order, Jobs held after, wake
    (
        "hold-deactivates-then-marks",
        {"job-w-0-a": "uid-0", "job-w-1-b": "uid-1", "job-other-c": "uid-x"},
        True,
        [
            ("workloads/job-w-0-a", {"spec": {"active": False}}),
            ("workloads/job-w-1-b", {"spec": {"active": False}}),
            ("jobs/w-0", HELD),
            ("jobs/w-1", HELD),
        ],
        (True, True),
        RESYNC_SECONDS,
    ),
    (
        "no-workload-yet-stays-unmarked-and-retries-soon",
        {"job-w-1-b": "uid-1"},
        True,
        [("workloads/job-w-1-b", {"spec": {"active": False}}), ("jobs/w-1", HELD)],
        (False, True),
        kueue.RETRY_SECONDS,
    ),
    (
        "resume-reactivates-then-unmarks",
        {"job-w-0-a": "uid-0", "job-w-1-b": "uid-1"},
        False,
        [
            ("workloads/job-w-0-a", {"spec": {"active": True}}),
            ("workloads/job-w-1-b", {"spec": {"active": True}}),
            ("jobs/w-0", UNHELD),
            ("jobs/w-1", UNHELD),
        ],
        (False, False),
        RESYNC_SECONDS,
    ),
    (
        "resume-with-the-workload-gone-is-done",  # Kueue makes the Job a new, active Workload
        {},
        False,
        [("jobs/w-0", UNHELD), ("jobs/w-1", UNHELD)],
        (False, False),
        RESYNC_SECONDS,
    ),
]


@pytest.mark.parametrize(
    ("workloads", "hold", "patches", "held", "wake"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_hold_queued_jobs(
    workloads: dict[str, str], hold: bool, patches: list[Any], held: tuple[bool, bool], wake: float
) -> None:
    kube = Recorder(workloads)
    r = runner(kube, held=not hold)
    got = asyncio.run(r._hold_queued(((0, "w-0"), (1, "w-1")), hold))
    assert kube.patches == patches
    assert (r.children.jobs[0].held, r.children.jobs[1].held) == held
    assert got == wake
    assert not [p for p, b in kube.patches if p.startswith("jobs/") and "spec" in b], "a Kueue Job's suspend is Kueue's"


@pytest.mark.parametrize(
    ("status", "reason", "says"),
    [
        pytest.param(404, Reason.KUEUE_UNAVAILABLE, "install Kueue", id="kueue-not-installed"),
        pytest.param(403, Reason.FORBIDDEN, "rbac.kueue=true", id="no-permission"),
    ],
)
def test_hold_without_kueue_access_stalls_saying_what_to_do(status: int, reason: Reason, says: str) -> None:
    kube = Recorder({}, list_error=status)
    with pytest.raises(Stalled) as info:
        asyncio.run(runner(kube, held=False)._hold_queued(((0, "w-0"),), True))
    assert info.value.reason == reason and says in info.value.message
    assert kube.patches == []
