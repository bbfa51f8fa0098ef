"""/metrics, /healthz and /readyz on one port (aiohttp comes with kopf)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

_started: list[web.AppRunner] = []


async def start_health_server(port: int) -> web.AppRunner | None:
    """Start the server once per process (a standby starts it before kopf does); None when it was
    started already, or `port` is 0: the caller then has nothing to clean up."""
    if port <= 0 or _started:
        return None

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def ok(_: web.Request) -> web.Response:
        # Answering at all proves the event loop is not blocked.
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", ok)
    app.router.add_get("/readyz", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    _started.append(runner)
    return runner
