"""A TLS-terminating HTTP proxy between the operator and the API server, whose faults tests choose.

A TCP proxy cannot tell requests apart or answer one with a chosen status (the traffic is TLS);
this one terminates TLS with the cluster's own serving certificate (kwokctl's pki/admin.crt, valid
for 127.0.0.1 and signed by the CA the kubeconfig trusts), so the operator runs unchanged with a
kubeconfig whose server is the proxy, and forwards to the API server with the admin client
certificate. Modes:

* PASS: forward every request; watch streams are relayed chunk by chunk.
* UNAVAILABLE: answer every request 503 as a starting API server does ("the request has been made
  before all known HTTP paths have been installed"), and end open streams.
* STALL: stop relaying: open streams stay open and silent, new requests are accepted and never
  answered, as over a network path that silently drops everything.

`freeze_open_streams()` silences only the responses being relayed at that moment, for good, while
new requests pass: connections a NAT or load balancer forgot without resetting them.

`answer(Rule(...))` answers chosen requests (method and path pattern) with a chosen status, as the
API server would (a Status body, Retry-After when given), until `clear()` or for the rule's first
`times` matches: 429 storms, 5xx and 409 conflicts on exactly the writes under test. Every request
is logged (`seen`, `answered`), so a test can count how often the operator tried.

It runs on its own event loop in a thread; `mode` may be switched from the test at any time.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from operator_proc import free_port

STARTING = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "the request has been made before all known HTTP paths have been installed, please try again",
    "reason": "ServiceUnavailable",
    "code": 503,
}
# Request headers worth relaying (the proxy authenticates upstream with its own client certificate).
FORWARDED = ("Content-Type", "Accept", "Accept-Encoding", "User-Agent")


REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
MESSAGES = {
    409: "Operation cannot be fulfilled: the object has been modified; please apply your changes to the "
    "latest version and try again",
    429: "the server has received too many requests and has asked us to try again later",
    500: "Internal error occurred: injected by the test's fault proxy",
    503: "the server is currently unable to handle the request",
}


@dataclass
class Rule:
    """Answer requests whose method is `method` (None: any) and whose path matches `path` (a regex,
    searched in the path without the query) with `status`, `times` times (None: until cleared)."""

    status: int
    path: str
    method: str | None = None
    retry_after: str | None = None
    times: int | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method is None or self.method == method) and re.search(self.path, path) is not None


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic()
    method: str
    path: str
    status: int | None  # what the proxy answered by itself (None: forwarded)


@dataclass
class Log:
    entries: list[Seen] = field(default_factory=list)

    def answered(self, status: int, method: str | None = None, path: str = "") -> list[Seen]:
        """The requests the proxy answered itself with `status` (optionally: that method, path regex)."""
        return [
            s
            for s in self.entries
            if s.status == status and (method is None or s.method == method) and re.search(path, s.path)
        ]


class Mode(enum.Enum):
    PASS = "pass"
    UNAVAILABLE = "unavailable"
    STALL = "stall"


class FaultProxy:
    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        cfg = yaml.safe_load(kubeconfig.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.upstream = cluster["server"]
        self.port = free_port()
        self.server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ssl.load_cert_chain(user["client-certificate"], user["client-key"])
        self.client_ssl = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.client_ssl.load_cert_chain(user["client-certificate"], user["client-key"])
        cluster["server"] = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig-proxied.yaml"
        self.kubeconfig.write_text(yaml.safe_dump(cfg))
        self.mode = Mode.PASS
        self.requests = 0  # answered by the proxy (any mode): how the test knows the operator tried
        self.rules: tuple[Rule, ...] = ()
        self.seen = Log()
        self._changed: asyncio.Event | None = None
        self._generation = 0  # of the requests; those of a generation <= _frozen are silenced
        self._frozen = -1
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # ---- control, from the test's thread ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    def set(self, mode: Mode) -> None:
        def switch() -> None:
            self.mode = mode
            assert self._changed is not None
            self._changed.set()
            self._changed = asyncio.Event()

        self._loop.call_soon_threadsafe(switch)

    def answer(self, *rules: Rule) -> None:
        """From now on, answer the requests these rules match (replacing earlier rules)."""
        self.rules = rules  # one assignment: the proxy's loop sees the old or the new tuple

    def clear(self) -> None:
        self.rules = ()

    def freeze_open_streams(self) -> None:
        def freeze() -> None:
            self._frozen = self._generation
            self._generation += 1
            assert self._changed is not None
            self._changed.set()
            self._changed = asyncio.Event()

        self._loop.call_soon_threadsafe(freeze)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ---- the proxy, on its own loop ------------------------------------------------------------
    async def _start(self) -> None:
        self._changed = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.server_ssl).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _stalled(self) -> None:
        """Hold until the mode changes (or the client goes away and this handler is cancelled)."""
        while self.mode is Mode.STALL:
            assert self._changed is not None
            await self._changed.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        rule = next((r for r in self.rules if r.matches(request.method, request.path)), None)
        self.seen.entries.append(Seen(time.monotonic(), request.method, request.path, rule and rule.status))
        if rule is not None:
            rule.hits += 1
            return _status_answer(rule)
        if self.mode is Mode.STALL:
            await self._stalled()
        if self.mode is Mode.UNAVAILABLE:
            return web.Response(status=503, text=json.dumps(STARTING), content_type="application/json")
        assert self._session is not None
        headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
        body = await request.read()
        url = self.upstream + str(request.rel_url)
        async with self._session.request(request.method, url, headers=headers, data=body or None) as up:
            out = web.StreamResponse(status=up.status)
            for h in ("Content-Type", "Content-Encoding", "Retry-After"):
                if h in up.headers:
                    out.headers[h] = up.headers[h]
            await out.prepare(request)
            await self._relay(up, out, self._generation)
            await out.write_eof()
            return out

    async def _relay(self, up: aiohttp.ClientResponse, out: web.StreamResponse, generation: int) -> None:
        """Copy the body chunk by chunk, holding it while stalled and ending it when unavailable."""
        chunks = up.content.iter_any().__aiter__()
        nxt: asyncio.Future[bytes] | None = None
        try:
            while self.mode is not Mode.UNAVAILABLE:
                if generation <= self._frozen:
                    await asyncio.Event().wait()  # silent until the client gives up
                if self.mode is Mode.STALL:
                    await self._stalled()
                    continue
                nxt = nxt or asyncio.ensure_future(anext(chunks))
                assert self._changed is not None
                changed = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait({nxt, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if nxt not in done:
                    continue  # the mode changed: look at it again
                try:
                    chunk = nxt.result()
                except StopAsyncIteration:
                    return
                nxt = None
                if self.mode is Mode.STALL:
                    await self._stalled()  # this chunk is held back too
                if self.mode is Mode.UNAVAILABLE:
                    break
                await out.write(chunk)
            # The API server went away mid-answer: the connection breaks, it does not end cleanly.
            if self.mode is Mode.UNAVAILABLE:
                raise ConnectionResetError("the proxy's API server became unavailable")
        finally:
            if nxt is not None:
                nxt.cancel()


def _status_answer(rule: Rule) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": MESSAGES.get(rule.status, f"HTTP {rule.status} injected by the test's fault proxy"),
        "reason": REASONS.get(rule.status, ""),
        "code": rule.status,
    }
    headers = {"Retry-After": rule.retry_after} if rule.retry_after is not None else None
    return web.Response(status=rule.status, text=json.dumps(body), content_type="application/json", headers=headers)
