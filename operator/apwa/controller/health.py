"""/metrics, /healthz and /readyz on one port (aiohttp comes with kopf).

/readyz fails while the operator cannot see the cluster (a watch is disconnected); /healthz fails
when one of its loops is stuck (controller/vitals.py says which conditions, and why a restart is
the cure only for those). Both answer from the event loop, so a blocked loop fails both. A failing
answer lists the reasons, one per line.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apwa.controller.vitals import VITALS


def _answer(problems: list[str]) -> web.Response:
    if problems:
        return web.Response(status=503, text="\n".join(problems) + "\n")
    return web.Response(text="ok")


_started: list[web.AppRunner] = []


async def start_health_server(port: int) -> web.AppRunner | None:
    """Start the server once per process (a standby starts it before kopf does); None when it was
    started already, or `port` is 0: the caller then has nothing to clean up."""
    if port <= 0 or _started:
        return None

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return _answer(VITALS.not_live())

    async def readyz(_: web.Request) -> web.Response:
        return _answer(VITALS.not_ready())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    _started.append(runner)
    return runner
