"""/metrics, /healthz and /readyz on one port (aiohttp comes with kopf)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def start_health_server(port: int) -> web.AppRunner | None:
    if port <= 0:
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
    return runner
