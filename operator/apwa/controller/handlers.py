"""kopf serves the ParallelWorkloads; lean streams (controller/watch.py) serve their Jobs and Pods.

Only an `on.event` handler: kopf then keeps no per-object state on our resources (no finalizers,
no annotations), so deleting a workload is never blocked by the operator being down.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

import kopf

from apwa import GROUP, PLURAL, VERSION
from apwa.controller.registry import REGISTRY
from apwa.controller.vitals import VITALS
from apwa.controller.watch import DEFAULT_TIMEOUT, ChildWatch
from apwa.kube.client import Kube
from apwa.rendering import LABEL_ROLE
from apwa.rendering.jobs import MANAGED_BY

# Every child the operator makes carries both labels; the API server filters on them.
CHILD_SELECTOR = ",".join([*(f"{k}={v}" for k, v in MANAGED_BY.items()), LABEL_ROLE])


# The children's watches of the running kopf instance (main.py may start kopf again after it
# stopped on an error: the next startup stops what the last one left first).
WATCHES: list[asyncio.Task[None]] = []


def watch_timeout() -> float:
    """APWA_WATCH_TIMEOUT: seconds a watch may stay silent before it counts as stalled."""
    raw = os.environ.get("APWA_WATCH_TIMEOUT")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"APWA_WATCH_TIMEOUT={raw!r}: expected a number of seconds, e.g. 90") from None
    if value <= 0:
        raise ValueError(f"APWA_WATCH_TIMEOUT={raw!r}: must be positive")
    return value


class RetryForever:
    """kopf's error_backoffs, never exhausted. kopf retries an API error (5xx, 403, 429, a refused
    connection) once per backoff and then escalates it; escalated in a watch stream, the error
    ends the operator. An API server coming back from an outage answers 503 ("the request has
    been made before all known HTTP paths have been installed") for as long as etcd is not back:
    with a finite list the operator exited after about a minute of it. Re-iterable: kopf iterates
    the setting afresh for every request."""

    def __init__(self, first: tuple[float, ...], then: float) -> None:
        self.first, self.then = first, then

    def __iter__(self) -> Iterator[float]:
        yield from self.first
        while True:
            yield self.then


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    timeout = watch_timeout()
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 10
    # kopf's stream restarts when nothing (not even a bookmark) came for this long.
    settings.watching.inactivity_timeout = timeout
    settings.networking.error_backoffs = RetryForever((1, 2, 5), 10)
    await stop_children()  # what an earlier kopf run of this process left, if any
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
            timeout,
        ),
        ChildWatch(
            kube,
            "/api/v1",
            "pods",
            CHILD_SELECTOR,
            lambda t, o: REGISTRY.child_event("pod", t, o),
            None,
            namespaces,
            timeout,
        ),
    ]
    WATCHES.extend(asyncio.create_task(w.run(), name=f"watch {w.paths[0]}") for w in watches)
    VITALS.serving = True


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await stop_children()


async def stop_children() -> None:
    """Stop the watches and the workload loops and close the client (idempotent)."""
    VITALS.serving = False
    tasks, WATCHES[:] = list(WATCHES), []
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    VITALS.forget_watches()
    await REGISTRY.stop_all()
    if REGISTRY.kube is not None:
        await REGISTRY.kube.close()
        REGISTRY.kube = None
        REGISTRY.reset_orphans()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def workload_event(event: dict[str, Any], **_: Any) -> None:
    REGISTRY.workload_event(event.get("type"), event["object"])
