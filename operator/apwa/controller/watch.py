"""Lean list+watch streams for the operator's children (Jobs and Pods).

kopf serves the ParallelWorkloads; the children, thousands of objects with several events each,
go through these streams instead: one watch per kind (per namespace when the operator is limited
to named namespaces), label-filtered at the API server, each event parsed once and handed to the
registry. At the operator's scale kopf's per-event machinery cost more CPU than the API server
spent serving the events, and the CPU is shared with it.

Each stream retries forever (an API server down for an hour is waited out) and reports to
controller/vitals.py: connected or not (readiness, `apwa_api_reachable`), and a sign of life on
every event, bookmark, list page and failed attempt (liveness). Every await is bounded by the
watch timeout: a stream that stays silent that long (the API server sends a bookmark about once a
minute) is taken for stalled, dropped and resumed from its last resourceVersion.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx

from apwa import metrics
from apwa.common.retry import Backoff
from apwa.controller import faultpoints
from apwa.controller.vitals import VITALS, WATCH_BACKOFF_CAP
from apwa.kube.client import ApiError, Kube

log = logging.getLogger("apwa.watch")
EventHandler = Callable[[str, dict[str, Any]], None]
SyncHandler = Callable[[set[str]], None]
# Longer than the API server's bookmark interval (about a minute) with room for a slow machine.
DEFAULT_TIMEOUT = 90.0


class ChildWatch:
    def __init__(
        self,
        kube: Kube,
        base: str,
        plural: str,
        selector: str,
        on_event: EventHandler,
        on_sync: SyncHandler | None = None,
        namespaces: list[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.kube = kube
        self.timeout = timeout
        self.selector = selector
        self.on_event = on_event
        self.on_sync = on_sync
        names = namespaces or []
        self.patterns = [n for n in names if any(ch in n for ch in "*?[")]
        if names and not self.patterns:
            self.paths = [f"{base}/namespaces/{ns}/{plural}" for ns in names]
        else:  # everything, or patterns: one cluster-wide stream, filtered here
            self.paths = [f"{base}/{plural}"]

    def _wanted(self, obj: dict[str, Any]) -> bool:
        if not self.patterns:
            return True
        ns = obj["metadata"].get("namespace", "")
        return any(fnmatch.fnmatchcase(ns, p) for p in self.patterns)

    async def run(self) -> None:
        await asyncio.gather(*(self._run_path(p) for p in self.paths))

    async def _run_path(self, path: str) -> None:
        VITALS.watch(path, self.timeout)
        for reason in ("stalled", "error", "expired"):
            # Present at 0 from the start: increase() and alerts see the first restart, not nothing.
            metrics.WATCH_RESTARTS.labels(watch=path, reason=reason)
        backoff = Backoff(0.5, WATCH_BACKOFF_CAP)
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    rv = await self._list(path)
                    VITALS.connected(path, True)
                rv = await self._watch(path, rv)
                backoff.reset()
                if rv is None:
                    # 410 Gone: the resourceVersion it resumed from is compacted (or older than the
                    # API server's window, e.g. after its restart). Relisting is the cure; counted
                    # and logged so that a test (and a person) can tell it happened.
                    metrics.WATCH_RESTARTS.labels(watch=path, reason="expired").inc()
                    log.info("watch %s: resourceVersion expired (410 Gone); listing again", path)
            except asyncio.CancelledError:
                raise
            except httpx.ReadTimeout:
                # Nothing, not even a bookmark, for `timeout`: a stalled stream. Its resourceVersion
                # is still good: resume from it (a 410 then relists).
                metrics.WATCH_RESTARTS.labels(watch=path, reason="stalled").inc()
                VITALS.connected(path, False)
                log.warning("watch %s: silent for %.0fs; resuming from resourceVersion %s", path, self.timeout, rv)
            except (ApiError, httpx.HTTPError, ValueError, TimeoutError) as e:
                metrics.WATCH_RESTARTS.labels(watch=path, reason="error").inc()
                VITALS.connected(path, False)
                wait = backoff.next()
                log.warning("watch %s: %s; again in %.1fs", path, str(e) or type(e).__name__, wait)
                await asyncio.sleep(wait)
                rv = None  # relist: the stream may have missed events

    async def _list(self, path: str) -> str:
        seen: set[str] = set()
        params: dict[str, Any] = {"labelSelector": self.selector, "limit": 500}
        while True:
            # Each page, not the whole list, is bounded: a list of 100,000 pods takes a while.
            _, page = await asyncio.wait_for(self.kube.request("GET", path, params=params), self.timeout)
            VITALS.alive(path)
            for obj in page.get("items") or []:
                if self._wanted(obj):
                    seen.add(obj["metadata"]["uid"])
                    self.on_event("ADDED", obj)
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            params["continue"] = meta["continue"]
        if self.on_sync:
            self.on_sync(seen)  # whatever was not listed is gone
        return str(meta.get("resourceVersion", ""))

    async def _watch(self, path: str, rv: str) -> str | None:
        """Stream events from `rv`. Returns the last resourceVersion, or None to relist."""
        params = {
            "watch": "1",
            "labelSelector": self.selector,
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(random.randint(240, 360)),
        }
        async with self.kube.stream("GET", path, params=params, read_timeout=self.timeout) as resp:
            if resp.status_code == 410:
                return None
            if resp.status_code >= 300:
                body = (await resp.aread()).decode(errors="replace")[:300]
                raise ApiError(resp.status_code, body, "WATCH", path)
            VITALS.connected(path, True)
            async for line in resp.aiter_lines():
                VITALS.alive(path)
                if not line:
                    continue
                if faultpoints.passed(faultpoints.Point.WATCH_EVENT):
                    await faultpoints.forever()
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None  # too old: relist
                    raise ApiError(int(obj.get("code") or 500), obj, "WATCH", path)
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if kind == "BOOKMARK" or not self._wanted(obj):
                    continue
                self.on_event(kind, obj)
        return rv
