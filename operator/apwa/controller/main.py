"""`apwa operator`: run the operator out of cluster (kubeconfig) or in cluster (service account)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import time

import kopf

from apwa import metrics
from apwa.common.retry import Backoff
from apwa.controller.handlers import stop_children
from apwa.controller.health import start_health_server
from apwa.controller.vitals import VITALS

log = logging.getLogger("apwa.operator")


def run_operator(args: argparse.Namespace) -> int:
    from apwa.controller import handlers  # noqa: F401  (registers the kopf handlers)
    from apwa.controller.registry import REGISTRY

    level = (args.log_level or os.environ.get("APWA_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every handled event at INFO: far too much at thousands of Jobs.
    logging.getLogger("kopf").setLevel(max(logging.getLevelName(level), logging.WARNING))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    namespaces = args.namespaces or [n for n in os.environ.get("APWA_NAMESPACES", "").split(",") if n]
    port = args.metrics_port if args.metrics_port is not None else int(os.environ.get("APWA_METRICS_PORT", "8080"))
    REGISTRY.settings.metrics_port = port
    REGISTRY.settings.namespaces = namespaces
    if args.max_subtasks:
        REGISTRY.settings.max_subtasks = args.max_subtasks
    if os.environ.get("APWA_STORE_SIDECAR_IMAGE"):
        REGISTRY.settings.sidecar_image = os.environ["APWA_STORE_SIDECAR_IMAGE"]
    interval = os.environ.get("APWA_STATUS_INTERVAL")
    if interval:
        REGISTRY.settings.status_interval = float(interval)
    deadline = os.environ.get("APWA_STEP_DEADLINE")  # seconds; tests shorten it (docs/reliability.md)
    if deadline:
        VITALS.step_deadline = float(deadline)
    # Bench-only escape hatch (docs/results.md): "0" creates pods without the result finalizer.
    REGISTRY.settings.pod_finalizer = os.environ.get("APWA_POD_FINALIZER", "1") != "0"
    peering = args.peering or os.environ.get("APWA_PEERING") or None
    try:
        asyncio.run(serve(namespaces, peering, port))
    except KeyboardInterrupt:
        pass
    return 0


async def serve(namespaces: list[str], peering: str | None, port: int) -> None:
    """Run kopf until it is asked to stop; when it stops on an error instead, start it again.

    kopf ends when a watch stream fails for good (an error it does not retry, such as a 401 while a
    restarted API server cannot yet verify tokens, or an ERROR event in a stream). The operator
    must outlive any API server outage by itself: the health endpoints stay up meanwhile (not ready),
    and every workload is picked up again from the cluster (the restart after a SIGKILL does the
    same, tests/integration/test_operator.py)."""
    health = await start_health_server(port)
    backoff = Backoff(1.0, 60.0)
    try:
        while True:
            started = time.monotonic()
            try:
                await kopf.operator(
                    clusterwide=not namespaces,
                    namespaces=namespaces,
                    standalone=peering is None,
                    peering_name=peering,
                    # kopf would derive it from the user name, and a numeric uid without a passwd
                    # entry (the images run as 65532) has none: getpwuid() raises and the pod crashes.
                    identity=f"apwa@{socket.gethostname()}/{os.getpid()}",
                )
                return  # stopped on request (a signal)
            except Exception as e:  # any failure of kopf is waited out, then retried
                await stop_children()
                metrics.KOPF_RESTARTS.inc()
                if time.monotonic() - started > 600:
                    backoff.reset()  # it ran well for a while: this is a new failure
                wait = backoff.next()
                log.error("kopf stopped on an error (%r); starting it again in %.0fs", e, wait, exc_info=e)
                await asyncio.sleep(wait)
    finally:
        if health is not None:
            await health.cleanup()
