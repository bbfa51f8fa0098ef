"""The result finalizer: rendered on every subtask and reduce pod, released by the operator only once
the outcome (or the final status) is stored, and for pods that have nothing to read. The pure
bookkeeping (ChildIndex.hold) is tabled in test_core_states.py; this is the executor's side,
against an in-memory API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from apwa.api.models import ParallelWorkloadSpec
from apwa.controller.finalizers import RELEASE_PATCH, Orphans, PodReleaser
from apwa.controller.workload import Settings, WorkloadRunner
from apwa.planning import plan
from apwa.rendering import RESULT_FINALIZER, Owner, render_job, render_reduce_job, without_result_finalizer

POD = {"spec": {"containers": [{"name": "main", "image": "i", "command": ["true"]}]}}
OWNER = Owner("w", "ns", "uid-w")


def spec(pod: dict[str, Any] | None = None) -> ParallelWorkloadSpec:
    return ParallelWorkloadSpec.model_validate(
        {
            "decomposition": {"range": {"end": 2}},
            "templates": {"default": {"podTemplate": pod or POD}},
            "results": {"reduce": {"template": "default"}},
        }
    )


# ---- rendering ----------------------------------------------------------------------------------
def test_subtask_and_reduce_pods_hold_the_result_finalizer() -> None:
    s = spec()
    job = render_job(OWNER, s, plan(s)[0], 2)
    reduce = render_reduce_job(OWNER, s, "w-reduce-input", "results.json")
    assert job["spec"]["template"]["metadata"]["finalizers"] == [RESULT_FINALIZER]
    assert reduce["spec"]["template"]["metadata"]["finalizers"] == [RESULT_FINALIZER]
    assert "finalizers" not in job["metadata"], "the Job itself is not held"


def test_a_templates_own_finalizers_are_kept_and_ours_added_once() -> None:
    pod = {**POD, "metadata": {"finalizers": ["example.com/keep", RESULT_FINALIZER]}}
    s = spec(pod)
    job = render_job(OWNER, s, plan(s)[0], 2)
    assert job["spec"]["template"]["metadata"]["finalizers"] == ["example.com/keep", RESULT_FINALIZER]
    assert without_result_finalizer(job)["spec"]["template"]["metadata"]["finalizers"] == ["example.com/keep"]


def test_the_escape_hatch_renders_no_finalizer() -> None:
    s = spec()
    job = without_result_finalizer(render_job(OWNER, s, plan(s)[0], 2))
    assert "finalizers" not in job["spec"]["template"]["metadata"]


# ---- the executor -------------------------------------------------------------------------------
class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None
        self.released: list[str] = []
        self.workloads: list[dict[str, Any]] = []

    async def create(self, path: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        name = body["metadata"].get("name") or f"event-{len(self.objects)}"
        key = f"{path}/{name}"
        if key in self.objects:
            return False, self.objects[key]
        self.objects[key] = {**body, "metadata": {**body["metadata"], "uid": f"uid-{name}"}}
        return True, self.objects[key]

    async def get(self, path: str) -> dict[str, Any] | None:
        return self.objects.get(path)

    async def list(self, path: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        if path.endswith("/parallelworkloads"):
            for w in self.workloads:
                yield w
        for key, obj in list(self.objects.items()):
            if key.startswith(path + "/"):
                yield obj

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/status"):
            self.status = body["status"]
        return body

    async def strategic_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert body == RELEASE_PATCH
        self.released.append(path.rsplit("/", 1)[1])
        return body

    async def put(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.objects[path] = body
        return 200, body


def runner(kube: FakeKube, n: int = 2, *, pod_finalizer: bool = True) -> WorkloadRunner:
    body = {
        "metadata": {"uid": "uid-w", "name": "w", "namespace": "ns", "generation": 1},
        "spec": {
            "decomposition": {"range": {"end": n}},
            "parallelism": n,
            "templates": {"default": {"podTemplate": POD}},
        },
    }
    settings = Settings(status_interval=0, pod_finalizer=pod_finalizer)
    return WorkloadRunner(kube, body, settings)  # type: ignore[arg-type]


def finished_job(index: int) -> dict[str, Any]:
    labels = {"apwa.dev/role": "subtask", "apwa.dev/index": str(index)}
    condition = {"type": "Complete", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}
    return {
        "metadata": {"name": f"w-{index}", "labels": labels, "uid": f"uid-w-{index}"},
        "status": {"conditions": [condition]},
    }


def pod(index: int, name: str, phase: str = "Succeeded", *, deleting: bool = False) -> dict[str, Any]:
    labels = {"apwa.dev/role": "subtask", "apwa.dev/index": str(index), "apwa.dev/workload-uid": "uid-w"}
    term = {"exitCode": 0 if phase == "Succeeded" else 1, "message": f'"r{index}"'}
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels, "finalizers": [RESULT_FINALIZER]}
    if deleting:
        meta["deletionTimestamp"] = "2020-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if phase in ("Succeeded", "Failed"):
        status["containerStatuses"] = [{"name": "main", "state": {"terminated": term}}]
    return {"metadata": meta, "spec": {"containers": [{"name": "main"}]}, "status": status}


async def settle(r: WorkloadRunner) -> None:
    await asyncio.gather(*r.creations.tasks)
    await r.releaser.settle()


def test_pods_are_released_only_after_their_outcome_is_stored() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        r = runner(kube)
        await r.step()
        await settle(r)
        jobs = [o for k, o in kube.objects.items() if "/jobs/" in k]
        assert all(j["spec"]["template"]["metadata"]["finalizers"] == [RESULT_FINALIZER] for j in jobs)
        r.on_job("MODIFIED", finished_job(0))
        r.on_pod("MODIFIED", pod(0, "w-0-first", "Failed"))  # a retried pod: released with the outcome too
        r.on_pod("MODIFIED", pod(0, "w-0-second"))
        r.on_pod("MODIFIED", pod(1, "w-1-a", "Running"))
        await settle(r)
        assert kube.released == [], "nothing is released before its outcome is stored"
        await r.step()
        await settle(r)
        assert sorted(kube.released) == ["w-0-first", "w-0-second"]
        assert any(k.endswith("results-0") for k in kube.objects), "stored before the release"
        r.on_pod("MODIFIED", pod(0, "w-0-late", "Running"))  # a late event of a stored subtask
        await settle(r)
        assert kube.released[-1] == "w-0-late"

    asyncio.run(scenario())


def test_a_pod_deleted_before_it_finished_is_released_at_once() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        r = runner(kube)
        await r.step()
        r.on_pod("MODIFIED", pod(1, "w-1-a", "Running", deleting=True))
        r.on_pod("MODIFIED", pod(0, "w-0-a", "Succeeded", deleting=True))  # finished: kept until stored
        await settle(r)
        assert kube.released == ["w-1-a"]

    asyncio.run(scenario())


def test_a_restart_releases_pods_of_outcomes_stored_before_it() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        first = runner(kube)
        await first.step()
        await settle(first)
        first.on_job("MODIFIED", finished_job(0))
        first.on_pod("MODIFIED", pod(0, "w-0-a"))
        first.releaser.release = lambda namespace, names: None  # type: ignore[method-assign]  # killed before
        await first.step()
        assert kube.released == []
        kube.objects["/api/v1/namespaces/ns/pods/w-0-a"] = pod(0, "w-0-a")
        kube.objects["/api/v1/namespaces/ns/pods/w-1-a"] = pod(1, "w-1-a", "Running")
        second = runner(kube)
        await second.step()
        await settle(second)
        assert kube.released == ["w-0-a"]

    asyncio.run(scenario())


def test_the_final_status_releases_everything_and_later_pods_too() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        r = runner(kube)
        await r.step()
        await settle(r)
        for i in range(2):
            r.on_job("MODIFIED", finished_job(i))
            r.on_pod("MODIFIED", pod(i, f"w-{i}-a"))
        await r.step()
        await settle(r)
        assert kube.status is not None and kube.status["phase"] == "Succeeded"
        assert sorted(kube.released) == ["w-0-a", "w-1-a"]
        r.on_pod("MODIFIED", pod(1, "w-1-stray", "Running"))
        await settle(r)
        assert kube.released[-1] == "w-1-stray"

    asyncio.run(scenario())


def test_a_finished_workload_found_at_start_lists_and_releases_its_pods_once() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        kube.objects["/api/v1/namespaces/ns/pods/w-0-a"] = pod(0, "w-0-a")
        kube.objects["/api/v1/namespaces/ns/pods/w-1-a"] = {**pod(1, "w-1-a"), "metadata": {"name": "w-1-a"}}
        r = runner(kube)
        r.body["status"] = {"phase": "Succeeded", "completionTime": "2020-01-01T00:00:00Z"}
        await r.step()
        await r.step()
        await settle(r)
        assert kube.released == ["w-0-a"]

    asyncio.run(scenario())


def test_without_the_finalizer_nothing_is_held_or_patched() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        r = runner(kube, pod_finalizer=False)
        await r.step()
        await settle(r)
        jobs = [o for k, o in kube.objects.items() if "/jobs/" in k]
        assert jobs and all("finalizers" not in j["spec"]["template"]["metadata"] for j in jobs)

    asyncio.run(scenario())


ORPHANS = [
    # name, workloads the API server lists, released
    ("workload-gone", [], ["p"]),
    ("workload-being-deleted", [{"metadata": {"uid": "uid-w", "deletionTimestamp": "2020-01-01T00:00:00Z"}}], ["p"]),
    ("workload-live-its-loop-decides", [{"metadata": {"uid": "uid-w"}}], []),
]


@pytest.mark.parametrize(("workloads", "released"), [pytest.param(*r[1:], id=r[0]) for r in ORPHANS])
def test_a_pod_whose_workload_has_no_loop(workloads: list[dict[str, Any]], released: list[str]) -> None:
    async def scenario() -> None:
        kube = FakeKube()
        kube.workloads = workloads
        releaser = PodReleaser(kube)  # type: ignore[arg-type]
        orphans = Orphans(kube, releaser)  # type: ignore[arg-type]
        orphans.add(pod(0, "p", "Succeeded", deleting=True))
        orphans.add(pod(0, "p", "Succeeded", deleting=True))
        await asyncio.gather(*orphans.checks.values())
        await releaser.settle()
        assert kube.released == released

    asyncio.run(scenario())
