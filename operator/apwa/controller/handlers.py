"""kopf handlers: one watch per kind (workloads, their Jobs, their Pods), all events to the registry.

Only `on.event` handlers: kopf then keeps no per-object state on our resources (no finalizers,
no annotations), so deleting a workload is never blocked by the operator being down.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from apwa import GROUP, PLURAL, VERSION
from apwa.controller.health import start_health_server
from apwa.controller.registry import REGISTRY
from apwa.kube.client import Kube
from apwa.rendering import LABEL_ROLE

MANAGED = {"app.kubernetes.io/managed-by": "apwa"}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.networking.error_backoffs = [1, 2, 5, 10]
    REGISTRY.kube = Kube.from_config()
    memo.health = await start_health_server(REGISTRY.settings.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await REGISTRY.stop_all()
    if REGISTRY.kube is not None:
        await REGISTRY.kube.close()
    runner = getattr(memo, "health", None)
    if runner is not None:
        await runner.cleanup()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def workload_event(event: dict[str, Any], **_: Any) -> None:
    REGISTRY.workload_event(event.get("type"), event["object"])


@kopf.on.event("batch", "v1", "jobs", labels={**MANAGED, LABEL_ROLE: kopf.PRESENT})
async def job_event(event: dict[str, Any], **_: Any) -> None:
    REGISTRY.child_event("job", event.get("type"), event["object"])


@kopf.on.event("v1", "pods", labels={**MANAGED, LABEL_ROLE: kopf.PRESENT})
async def pod_event(event: dict[str, Any], **_: Any) -> None:
    REGISTRY.child_event("pod", event.get("type"), event["object"])
