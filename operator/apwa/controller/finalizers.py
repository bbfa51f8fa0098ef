"""Releasing the pods' result finalizer: the effects of the core's pod bookkeeping (ChildIndex.hold).

Every subtask and reduce pod is created holding RESULT_FINALIZER (rendering.jobs), so neither the
pod garbage collector, nor a Job's TTL, nor a `kubectl delete` takes the pod, and with it its
termination message, away before the operator has stored the outcome. It is removed:

* when the subtask's outcome is durably stored (ReleaseJobs: WorkloadRunner._release), for every
  pod of every attempt of that subtask;
* for a pod seen after that: late events, or an operator restarted between storing and releasing
  (the loop's seed lists the pods);
* for a pod being deleted before it finished: there is nothing to read;
* when the workload is finished (its final status is written: every pod still held, the reduce's
  included; a finished workload found at start lists its pods once);
* when the workload is deleted: the loop being stopped lets go of what it held, and a pod being
  deleted whose workload no loop runs is released once the API server says that workload is gone
  or being deleted (`Orphans`; right after a start the loops may not exist yet, and a live
  workload's loop releases its own pods).

The patch is the Job controller's own way of removing its tracking finalizer: a strategic-merge
`$deleteFromPrimitiveList`, which leaves every other finalizer alone (a merge patch of the whole
list would race with the Job controller removing its own). A 404 is success.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from apwa import API_VERSION, PLURAL, metrics
from apwa.common.retry import Backoff
from apwa.kube.client import ApiError, Kube, ns_path
from apwa.rendering import LABEL_UID, RESULT_FINALIZER

log = logging.getLogger("apwa.finalizers")
RELEASE_PATCH = {"metadata": {"$deleteFromPrimitiveList/finalizers": [RESULT_FINALIZER]}}
# Each patch is already retried inside the client (429, 5xx); these are further rounds after that.
RELEASE_ATTEMPTS = 5
# Pods of a deleted workload are deleted together: one list of the namespace's workloads per burst.
ORPHAN_COALESCE_SECONDS = 0.5


class PodReleaser:
    """Removes RESULT_FINALIZER from pods, in the background, each pod once at a time."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.pending: set[tuple[str, str]] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def release(self, namespace: str, names: Iterable[str]) -> None:
        for name in names:
            key = (namespace, name)
            if key in self.pending:
                continue
            self.pending.add(key)
            task = asyncio.create_task(self._release(key))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _release(self, key: tuple[str, str]) -> None:
        namespace, name = key
        backoff = Backoff(1.0, 30.0)
        try:
            for attempt in range(1, RELEASE_ATTEMPTS + 1):
                try:
                    await self.kube.strategic_patch(ns_path("v1", namespace, "pods", name), RELEASE_PATCH)
                    metrics.POD_RELEASES.inc()
                    return
                except ApiError as e:
                    if attempt == RELEASE_ATTEMPTS:
                        # The next event of the pod, or the next start, releases it.
                        log.warning("pod %s/%s keeps %s: %s", namespace, name, RESULT_FINALIZER, e)
                        return
                    await asyncio.sleep(backoff.next())
        finally:
            self.pending.discard(key)

    async def release_listed(self, namespace: str, uid: str) -> None:
        """Every pod of this workload still holding RESULT_FINALIZER (a finished workload found at start)."""
        names = [
            pod["metadata"]["name"]
            async for pod in self.kube.list(ns_path("v1", namespace, "pods"), labelSelector=f"{LABEL_UID}={uid}")
            if RESULT_FINALIZER in (pod["metadata"].get("finalizers") or ())
        ]
        self.release(namespace, names)

    async def settle(self) -> None:
        """Wait for the releases in flight (shutdown, tests)."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class Orphans:
    """Pods being deleted, holding RESULT_FINALIZER, whose workload no loop runs.

    Released once the API server says their workload is gone or being deleted: right after a
    start the loops may not exist yet, and a live workload's loop decides about its own pods
    (it lists them when it starts)."""

    def __init__(self, kube: Kube, releaser: PodReleaser) -> None:
        self.kube, self.releaser = kube, releaser
        self.waiting: dict[str, dict[str, str]] = {}  # namespace -> pod name -> workload uid
        self.checks: dict[str, asyncio.Task[None]] = {}

    def add(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        namespace = meta["namespace"]
        self.waiting.setdefault(namespace, {})[meta["name"]] = (meta.get("labels") or {}).get(LABEL_UID, "")
        if namespace not in self.checks:
            self.checks[namespace] = asyncio.create_task(self._check(namespace), name=f"orphan pods {namespace}")

    async def _check(self, namespace: str) -> None:
        backoff = Backoff(ORPHAN_COALESCE_SECONDS, 30.0)
        try:
            while self.waiting.get(namespace):
                await asyncio.sleep(backoff.next())  # pacing: one list per burst, longer after errors
                pods = self.waiting.pop(namespace, {})
                try:
                    live = await self._live_workloads(namespace)
                except ApiError as e:
                    log.warning("pods of deleted workloads in %s: %s; retrying", namespace, e)
                    self.waiting[namespace] = {**pods, **self.waiting.get(namespace, {})}
                    continue
                backoff.reset()
                self.releaser.release(namespace, [name for name, uid in pods.items() if uid not in live])
        finally:
            self.checks.pop(namespace, None)

    async def _live_workloads(self, namespace: str) -> set[str]:
        return {
            w["metadata"]["uid"]
            async for w in self.kube.list(ns_path(API_VERSION, namespace, PLURAL))
            if not w["metadata"].get("deletionTimestamp")
        }
