"""Routes watch events to the per-workload loops, starting and stopping them."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from apwa import metrics
from apwa.api.vocabulary import Phase
from apwa.controller.finalizers import Orphans, PodReleaser
from apwa.controller.vitals import VITALS
from apwa.controller.workload import Settings, WorkloadRunner
from apwa.core import holds_result
from apwa.kube.client import Kube
from apwa.rendering import LABEL_UID

log = logging.getLogger("apwa.registry")


class Registry:
    def __init__(self) -> None:
        self.kube: Kube | None = None
        self.settings = Settings()
        self.runners: dict[str, WorkloadRunner] = {}
        self._orphans: Orphans | None = None

    @property
    def orphans(self) -> Orphans:
        """Pods being deleted whose workload has no loop (deleted, or not started yet)."""
        if self._orphans is None:
            assert self.kube is not None, "the operator has not started yet"
            self._orphans = Orphans(self.kube, PodReleaser(self.kube))
        return self._orphans

    def reset_orphans(self) -> None:
        """The client they used is closed (kopf stopped): the next one makes them afresh."""
        self._orphans = None

    def workload_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        runner = self.runners.get(uid)
        if event_type == "DELETED" or body["metadata"].get("deletionTimestamp"):
            # Owner references let the garbage collector remove every child.
            if runner is not None:
                runner.release_all_held()  # nothing of a deleted workload needs its pods
                metrics.forget_usage(runner.namespace, runner.name, runner.model)
                self.stop(uid)
            return
        if runner is None:
            assert self.kube is not None, "the operator has not started yet"
            runner = WorkloadRunner(self.kube, body, self.settings)
            runner.on_gone = lambda: self.workload_event("DELETED", {"metadata": {"uid": uid}})
            runner.task = asyncio.create_task(runner.run(), name=f"workload {body['metadata']['name']}")
            self.runners[uid] = runner
        runner.on_workload(body)
        self._gauge()

    def child_event(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        uid = (body["metadata"].get("labels") or {}).get(LABEL_UID)
        runner = self.runners.get(uid or "")
        if runner is None:
            # Its workload's loop reads existing children when it starts; a pod being deleted
            # that still holds the result finalizer is released if that workload is gone.
            if kind == "pod" and event_type != "DELETED" and body["metadata"].get("deletionTimestamp"):
                if holds_result(body):
                    self.orphans.add(body)
            return
        if kind == "job":
            runner.on_job(event_type or "ADDED", body)
        else:
            runner.on_pod(event_type or "ADDED", body)

    def jobs_listed(self, uids: set[str]) -> None:
        """After a (re)list of Jobs: any Job a loop still tracks that was not listed is gone."""
        for runner in self.runners.values():
            runner.forget_jobs_not_in(uids)

    def stop(self, uid: str) -> None:
        runner = self.runners.pop(uid, None)
        if runner:
            runner.stop()
            VITALS.loop_stopped(runner.key)
        self._gauge()

    async def stop_all(self) -> None:
        tasks = [r.task for r in self.runners.values() if r.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for runner in self.runners.values():
            VITALS.loop_stopped(runner.key)
        self.runners.clear()

    def _gauge(self) -> None:
        phases = Counter(r.status.get("phase") or Phase.PENDING for r in self.runners.values())
        for phase in Phase:
            metrics.WORKLOADS.labels(phase=str(phase)).set(phases.get(phase, 0))


REGISTRY = Registry()
