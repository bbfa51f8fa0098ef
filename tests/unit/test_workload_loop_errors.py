"""The workload loop after a failed step (controller/workload.py `_loop`): it waits its retry delay
whatever child events come, releases its pods when the namespace is being deleted, and stops when
its workload is found gone (a DELETED event kopf never delivered). Against a stubbed step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from apwa.controller import workload
from apwa.controller.workload import Settings, WorkloadRunner
from apwa.kube.client import ApiError

BODY = {"metadata": {"uid": "u", "name": "w", "namespace": "ns"}, "spec": {}}
TERMINATING = {
    "reason": "Forbidden",
    "message": 'configmaps "w-results-0" is forbidden: unable to create new content in namespace ns '
    "because it is being terminated",
    "details": {"causes": [{"type": "NamespaceTerminating", "field": "metadata.namespace"}]},
}
NS_GONE = {"reason": "NotFound", "message": 'namespaces "ns" not found', "details": {"kind": "namespaces"}}


class Kube:
    def __init__(self, workload_exists: bool) -> None:
        self.workload_exists = workload_exists

    async def get(self, path: str) -> dict[str, Any] | None:
        return BODY if self.workload_exists else None


def runner(kube: Kube, error: ApiError) -> tuple[WorkloadRunner, dict[str, int]]:
    r = WorkloadRunner(kube, BODY, Settings())  # type: ignore[arg-type]
    seen = {"steps": 0, "released": 0, "gone": 0}

    async def step() -> float:
        seen["steps"] += 1
        raise error

    def released() -> None:
        seen["released"] += 1

    def gone() -> None:
        seen["gone"] += 1
        r.stopped = True

    r.step = step  # type: ignore[method-assign]
    r.release_all_held = released  # type: ignore[method-assign]
    r.on_gone = gone
    return r, seen


async def run_for(r: WorkloadRunner, seconds: float, events_every: float = 0.01) -> None:
    """The loop, with a child event waking it every `events_every` s, as during a run."""
    task = asyncio.create_task(r._loop())

    async def events() -> None:
        while True:
            r.wake.set()
            await asyncio.sleep(events_every)

    pump = asyncio.create_task(events())
    await asyncio.wait({task}, timeout=seconds)
    r.stopped = True  # as the registry does: a cancellation alone can be swallowed (see WorkloadRunner.stop)
    for t in (task, pump):
        t.cancel()
    await asyncio.gather(task, pump, return_exceptions=True)


@pytest.mark.parametrize(
    ("error", "releases", "gone"),
    [
        # Not retried by the client: one step per retry delay (0.5 s here), not one per event.
        pytest.param(ApiError(403, {"reason": "Forbidden", "message": "no"}, "PATCH", "/s"), False, False, id="403"),
        pytest.param(ApiError(409, {"reason": "Conflict", "message": "x"}, "PATCH", "/s"), False, False, id="409"),
        pytest.param(ApiError(403, TERMINATING, "POST", "/cm"), True, False, id="namespace-terminating-releases"),
        pytest.param(ApiError(404, NS_GONE, "POST", "/cm"), False, True, id="gone-with-namespace-stops"),
    ],
)
def test_a_failed_step(error: ApiError, releases: bool, gone: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workload, "ERROR_RETRY_SECONDS", 0.5)
    r, seen = runner(Kube(workload_exists=False), error)
    asyncio.run(run_for(r, 1.3))
    # Events every 10 ms and a 0.1 s step interval: retried per event, 10 steps or more; per delay, 2-3.
    if gone:
        assert seen == {"steps": 1, "released": 0, "gone": 1}
        return
    assert 1 <= seen["steps"] <= 3, f"{seen['steps']} steps in 1.3 s with a 0.5 s retry delay"
    assert seen["released"] == (seen["steps"] if releases else 0) and seen["gone"] == 0


def test_a_404_while_the_workload_exists_is_only_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workload, "ERROR_RETRY_SECONDS", 0.5)
    r, seen = runner(Kube(workload_exists=True), ApiError(404, {"reason": "NotFound", "message": "cm"}, "GET", "/c"))
    asyncio.run(run_for(r, 1.3))
    assert 1 <= seen["steps"] <= 3 and seen["released"] == seen["gone"] == 0
