"""The operator's executor against an in-memory API: what the core decides must happen, even when
the API server refuses some of it. (The integration tier runs the same against a real one.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from apwa.api.vocabulary import Reason
from apwa.controller.workload import Settings, WorkloadRunner
from apwa.core import ChildIndex, Stalled
from apwa.kube.client import ApiError

POD = {"spec": {"containers": [{"name": "main", "image": "i", "command": ["true"]}]}}


class FakeKube:
    """Stores what is created; refuses Job creations of the indices in `refuse` with a 403."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.refuse: set[str] = set()
        self.status: dict[str, Any] | None = None

    async def create(self, path: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        name = body["metadata"].get("name") or f"event-{len(self.objects)}"
        if name in self.refuse:
            raise ApiError(403, {"reason": "Forbidden", "message": "exceeded quota: jobs"}, "POST", path)
        key = f"{path}/{name}"
        if key in self.objects:
            return False, self.objects[key]
        self.objects[key] = {**body, "metadata": {**body["metadata"], "uid": f"uid-{name}"}}
        return True, self.objects[key]

    async def get(self, path: str) -> dict[str, Any] | None:
        return self.objects.get(path)

    async def list(self, path: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        for key, obj in list(self.objects.items()):
            if key.startswith(path + "/"):
                yield obj

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/status"):
            self.status = body["status"]
        return body

    async def put(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.objects[path] = body
        return 200, body

    def jobs(self) -> list[str]:
        return sorted(k.rsplit("/", 1)[1] for k in self.objects if "/jobs/" in k)


def runner(kube: FakeKube, n: int = 8, parallelism: int = 5) -> WorkloadRunner:
    body = {
        "metadata": {"uid": "uid-w", "name": "w", "namespace": "ns", "generation": 1},
        "spec": {
            "decomposition": {"range": {"end": n}},
            "parallelism": parallelism,
            "templates": {"default": {"podTemplate": POD}},
        },
    }
    return WorkloadRunner(kube, body, Settings(status_interval=0))  # type: ignore[arg-type]


async def settle(r: WorkloadRunner) -> None:
    """Let every creation started by the last step finish (no timing involved)."""
    await asyncio.gather(*r.creations.tasks)


def test_refused_creations_are_reported_then_retried() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        kube.refuse = {"w-3", "w-4"}
        r = runner(kube)
        await r.step()
        await settle(r)
        assert kube.jobs() == ["w-0", "w-1", "w-2"]
        with pytest.raises(Stalled) as info:
            await r.step()
        assert info.value.reason == Reason.FORBIDDEN and "exceeded quota" in info.value.message
        kube.refuse.clear()  # the quota was raised
        await r.step()
        await settle(r)
        assert kube.jobs() == ["w-0", "w-1", "w-2", "w-3", "w-4"], "the refused subtasks are created, not skipped"
        await r.step()
        assert kube.status is not None and kube.status["counts"]["active"] == 5

    asyncio.run(scenario())


def test_status_written_once_per_step_and_events_after_it() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        order: list[str] = []
        create, patch = kube.create, kube.merge_patch

        async def tracked_create(path: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
            if body.get("kind") == "Event":
                order.append(f"event {body['reason']}")
            return await create(path, body)

        async def tracked_patch(path: str, body: dict[str, Any]) -> dict[str, Any]:
            order.append("status")
            return await patch(path, body)

        kube.create, kube.merge_patch = tracked_create, tracked_patch  # type: ignore[method-assign]
        r = runner(kube)
        await r.step()
        await settle(r)
        assert order == ["status", "event Planned"]

    asyncio.run(scenario())


LOSSES = [
    # name, cursor, lost before the advance, advance to, expected cursor
    ("plain-advance", 3, [], 8, 8),
    ("lost-after-decision", 3, [4], 8, 4),
    ("lost-lowest-wins", 3, [6, 2], 8, 2),
    ("lost-above-target", 3, [9], 8, 8),
]


@pytest.mark.parametrize(("cursor", "lost", "to", "expected"), [pytest.param(*r[1:], id=r[0]) for r in LOSSES])
def test_cursor_never_skips_a_lost_job(cursor: int, lost: list[int], to: int, expected: int) -> None:
    index = ChildIndex(cursor=cursor)
    for i in lost:
        index.lose(i)
    index.advance(to)
    assert index.cursor == expected
    index.advance(to + 1)
    assert index.cursor == to + 1, "a loss holds the cursor back once"


def finished_job(index: int) -> dict[str, Any]:
    labels = {"apwa.dev/role": "subtask", "apwa.dev/index": str(index)}
    condition = {"type": "Complete", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}
    return {
        "metadata": {"name": f"w-{index}", "labels": labels, "uid": f"uid-w-{index}"},
        "status": {"conditions": [condition]},
    }


def succeeded_pod(index: int) -> dict[str, Any]:
    labels = {"apwa.dev/role": "subtask", "apwa.dev/index": str(index)}
    term = {"exitCode": 0, "message": f'"r{index}"'}
    return {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "main"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "main", "state": {"terminated": term}}]},
    }


def test_a_lost_final_write_is_retried_and_its_event_posted_once() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        r = runner(kube, n=2, parallelism=2)
        await r.step()
        await settle(r)
        for i in range(2):
            r.on_job("MODIFIED", finished_job(i))
            r.on_pod("MODIFIED", succeeded_pod(i))
        patch, failures = kube.merge_patch, [ApiError(503, {"message": "busy"}, "PATCH", "status")]

        async def flaky(path: str, body: dict[str, Any]) -> dict[str, Any]:
            if path.endswith("/status") and failures:
                raise failures.pop()
            return await patch(path, body)

        kube.merge_patch = flaky  # type: ignore[method-assign]
        with pytest.raises(ApiError):
            await r.step()
        await r.step()
        assert kube.status is not None and kube.status["phase"] == "Succeeded"
        assert kube.status["result"] == [{"index": 0, "result": "r0"}, {"index": 1, "result": "r1"}]
        events = [o["reason"] for o in kube.objects.values() if o.get("kind") == "Event"]
        assert events.count("Succeeded") == 1

    asyncio.run(scenario())
