"""kopf serves the ParallelWorkloads; lean streams (controller/watch.py) serve their Jobs and Pods.

Only an `on.event` handler: kopf then keeps no per-object state on our resources (no finalizers,
no annotations), so deleting a workload is never blocked by the operator being down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from apwa import GROUP, PLURAL, VERSION
from apwa.controller.health import start_health_server
from apwa.controller.registry import REGISTRY
from apwa.controller.watch import ChildWatch
from apwa.kube.client import Kube
from apwa.rendering import LABEL_ROLE
from apwa.rendering.jobs import MANAGED_BY

# Every child the operator makes carries both labels; the API server filters on them.
CHILD_SELECTOR = ",".join([*(f"{k}={v}" for k, v in MANAGED_BY.items()), LABEL_ROLE])


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.networking.error_backoffs = [1, 2, 5, 10]
    REGISTRY.kube = kube = Kube.from_config()
    namespaces = REGISTRY.settings.namespaces
    watches = [
        ChildWatch(
            kube,
            "/apis/batch/v1",
            "jobs",
            CHILD_SELECTOR,
            lambda t, o: REGISTRY.child_event("job", t, o),
            REGISTRY.jobs_listed,
            namespaces,
        ),
        ChildWatch(
            kube, "/api/v1", "pods", CHILD_SELECTOR, lambda t, o: REGISTRY.child_event("pod", t, o), None, namespaces
        ),
    ]
    memo.watches = [asyncio.create_task(w.run(), name=f"watch {w.paths[0]}") for w in watches]
    memo.health = await start_health_server(REGISTRY.settings.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "watches", []):
        task.cancel()
    await asyncio.gather(*getattr(memo, "watches", []), return_exceptions=True)
    await REGISTRY.stop_all()
    if REGISTRY.kube is not None:
        await REGISTRY.kube.close()
    runner = getattr(memo, "health", None)
    if runner is not None:
        await runner.cleanup()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def workload_event(event: dict[str, Any], **_: Any) -> None:
    REGISTRY.workload_event(event.get("type"), event["object"])
