"""The operator's side of a few of the core's actions: writing the status, creating Jobs as a
pipeline, and the Events it posts. Kept apart from the loop so that the loop reads as a list of
steps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apwa import API_VERSION, KIND, metrics
from apwa.api.vocabulary import Reason
from apwa.common.times import format_iso
from apwa.core import RESYNC_SECONDS, PostEvent, Stalled, event_message, without_times
from apwa.kube.client import ApiError, Kube
from apwa.rendering import Owner, RenderError


class StatusWriter:
    """Writes a status only when it says something new, and not more often than `interval`
    unless it is final."""

    def __init__(self, kube: Kube, path: str, interval: float) -> None:
        self.kube, self.path, self.interval = kube, path, interval
        self.written: dict[str, Any] | None = None
        self.last_write = 0.0

    async def write(
        self, status: dict[str, Any], final: bool, cleared: dict[str, None] | None = None
    ) -> tuple[float, dict[str, Any] | None]:
        """Returns when to look again, and the status as the API server now has it (None when
        nothing was written). `cleared`: fields to remove (null in the merge patch)."""
        comparable = without_times(status)
        if self.written is not None and comparable == self.written:
            return RESYNC_SECONDS, None
        since = time.monotonic() - self.last_write
        if since < self.interval and not final:
            return self.interval - since, None
        body = await self.kube.merge_patch(self.path, {"status": {**status, **(cleared or {})}})
        metrics.STATUS_PATCHES.inc()
        self.last_write = time.monotonic()
        self.written = comparable
        return RESYNC_SECONDS, (body or {}).get("status", status)


class Creations:
    """Job creations as a pipeline of tasks: each one that ends wakes the loop, which starts
    the next, so there is no batch tail. Failures wait here for the next step to report them."""

    def __init__(self) -> None:
        self.in_flight: set[int] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.errors: list[BaseException] = []

    def raise_pending(self) -> None:
        if self.errors:
            err, self.errors = self.errors[0], []
            raise_create_error(err)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def event_body(owner: Owner, uid: str, e: PostEvent, now: float) -> dict[str, Any]:
    """A core/v1 Event about the workload."""
    stamp = format_iso(now)
    assert owner.namespace, "a workload on the cluster has a namespace"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{owner.name[:200]}.", "namespace": owner.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": owner.name,
            "namespace": owner.namespace,
            "uid": uid,
        },
        "type": str(e.type),
        "reason": str(e.reason),
        "message": event_message(e.message),
        "source": {"component": "apwa-operator"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": "apwa.dev/operator",
    }


def raise_create_error(err: BaseException) -> None:
    """A refused creation as the stall that reports it (other errors as they are)."""
    if isinstance(err, RenderError):
        raise Stalled(Reason.INVALID_TEMPLATE, str(err), retry=300)
    if isinstance(err, ApiError) and err.status in (400, 422):
        raise Stalled(Reason.JOB_REJECTED, f"the API server rejected a subtask Job: {err.message}", retry=60)
    if isinstance(err, ApiError) and err.status == 403:
        # Usually a ResourceQuota or a terminating namespace: worth retrying, but say so.
        raise Stalled(Reason.FORBIDDEN, f"creating subtask Jobs is forbidden: {err.message}", retry=15)
    raise err
