"""`apwa operator`: run the operator out of cluster (kubeconfig) or in cluster (service account)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from apwa import metrics
from apwa.controller.health import start_health_server
from apwa.controller.leader import Leadership, Timings
from apwa.kube.client import Kube

log = logging.getLogger("apwa.main")
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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
    # Bench-only escape hatch (docs/results.md): "0" creates pods without the result finalizer.
    REGISTRY.settings.pod_finalizer = os.environ.get("APWA_POD_FINALIZER", "1") != "0"
    peering = args.peering or os.environ.get("APWA_PEERING") or None
    try:
        return asyncio.run(_serve(namespaces, peering, _election(args), port))
    except KeyboardInterrupt:
        return 0


@dataclass(frozen=True)
class Election:
    namespace: str
    name: str
    timings: Timings


def _election(args: argparse.Namespace) -> Election | None:
    enabled = args.leader_election or os.environ.get("APWA_LEADER_ELECTION", "").lower() in ("1", "true")
    if not enabled:
        return None
    namespace = args.leader_election_namespace or os.environ.get("POD_NAMESPACE")
    if not namespace and SA_NAMESPACE.exists():
        namespace = SA_NAMESPACE.read_text().strip()
    timings = Timings(
        lease=float(os.environ.get("APWA_LEASE_DURATION", "15")),
        renew_deadline=float(os.environ.get("APWA_RENEW_DEADLINE", "10")),
        retry=float(os.environ.get("APWA_RETRY_PERIOD", "2")),
    )
    name = args.leader_election_id or os.environ.get("APWA_LEADER_ELECTION_ID") or "apwa-operator"
    return Election(namespace or "default", name, timings)


async def _serve(namespaces: list[str], peering: str | None, election: Election | None, port: int) -> int:
    # kopf would derive the identity from the user name, and a numeric uid without a passwd
    # entry (the images run as 65532) has none: getpwuid() raises and the pod crashes.
    identity = f"apwa@{socket.gethostname()}/{os.getpid()}"

    def operator() -> Coroutine[Any, Any, None]:
        return kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=peering is None,
            peering_name=peering,
            identity=identity,
        )

    if election is None:
        metrics.LEADER.set(1)
        await operator()
        return 0
    kube = Kube.from_config(concurrency=4)
    health = await start_health_server(port)  # a standby answers its probes while it waits
    lead = Leadership(kube, election.namespace, election.name, identity, election.timings)
    try:
        await lead.acquire()
        keeper = asyncio.create_task(lead.keep(), name="leader lease")
        running = asyncio.create_task(operator(), name="operator")
        done, _ = await asyncio.wait({keeper, running}, return_when=asyncio.FIRST_COMPLETED)
        if keeper in done:
            log.error("%s: stopping at once, a standby takes over", keeper.exception())
            # Exit now, not after a graceful stop: nothing in flight may write once another
            # replica may be leading. The kubelet restarts this one as a standby.
            os._exit(1)
        keeper.cancel()
        await lead.release()
        return 0
    finally:
        await kube.close()
        if health is not None:
            await health.cleanup()
