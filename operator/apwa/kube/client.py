"""A small async Kubernetes client on httpx.

The operator's hot path is "create thousands of Jobs as fast as the API server accepts them";
this client keeps that path short: pooled HTTP/1.1 connections, a semaphore bounding requests
in flight, and retries with jittered exponential backoff on 429, 5xx and transport
errors (honouring Retry-After). Credentials come from the kubeconfig or the in-cluster service
account, loaded once through the official client's config loader.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from apwa import metrics
from apwa.common.retry import Backoff, retry_after

log = logging.getLogger(__name__)
RETRY_STATUS = {429, 500, 502, 503, 504}
# Longer server-requested pauses are cut to this: the caller's own retry takes over.
MAX_RETRY_AFTER = 30.0
SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# Connections per httpx client. httpcore's pool scans its connections, and for each idle one all
# of them again, on every request and every response (httpcore 1.0.9): with 64 connections in one
# pool that bookkeeping took 43-58% of the operator's CPU at 10,000 subtasks (docs/scale-profile.md).
# Pools of 8, each request sent through the least busy one, keep the scans short.
POOL_SHARD = 8


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        message = body.get("message", "") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: {status} {self.reason}: {message}")
        self.message = message

    @property
    def namespace_terminating(self) -> bool:
        """A create refused because its namespace is being deleted (cause NamespaceTerminating)."""
        details = (self.body.get("details") or {}) if isinstance(self.body, dict) else {}
        causes = {c.get("type") for c in details.get("causes") or [] if isinstance(c, dict)}
        return self.status == 403 and ("NamespaceTerminating" in causes or "being terminated" in self.message)


class Kube:
    def __init__(
        self,
        base_url: str,
        *,
        verify: ssl.SSLContext | bool,
        headers: dict[str, str] | None = None,
        concurrency: int = 64,
        retries: int = 8,
        token_file: Path | None = None,
    ) -> None:
        full, rest = divmod(concurrency, POOL_SHARD)
        shards = [POOL_SHARD] * full + ([rest] if rest else [])
        self._clients = [
            httpx.AsyncClient(
                base_url=base_url,
                verify=verify,
                headers=headers or {},
                timeout=httpx.Timeout(30.0, connect=10.0),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            )
            for size in shards
        ]
        self._room = list(shards)  # free connections per client: the semaphore keeps one free somewhere
        self._client = self._clients[0]  # for plain one-off requests (metrics, benchmarks)
        # Watches hold their connection for minutes: a pool of their own, so they never starve
        # the request pool.
        self._watch_client = httpx.AsyncClient(
            base_url=base_url, verify=verify, headers=headers or {}, limits=httpx.Limits(max_connections=None)
        )
        self._sem = asyncio.Semaphore(concurrency)
        self._retries = retries
        self._token_file = token_file

    @classmethod
    def from_config(cls, *, concurrency: int = 64, in_cluster: bool | None = None) -> Kube:
        """Credentials from the in-cluster service account, else from KUBECONFIG / ~/.kube/config."""
        from kubernetes import client, config

        cfg = client.Configuration()
        token_file = None
        if in_cluster is None:
            in_cluster = SA_TOKEN.exists()
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
            token_file = SA_TOKEN  # bound tokens rotate; re-read on 401
        else:
            config.load_kube_config(client_configuration=cfg)
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        headers = {}
        token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if token:
            headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        return cls(cfg.host, verify=ctx, headers=headers, concurrency=concurrency, token_file=token_file)

    def stream(self, method: str, path: str, params: dict[str, Any], read_timeout: float = 420.0) -> Any:
        """A streaming request (watches): no overall timeout, only a limit on the silence between
        two reads (httpx.ReadTimeout), so a stalled connection is noticed."""
        return self._watch_client.stream(method, path, params=params, timeout=httpx.Timeout(10.0, read=read_timeout))

    async def close(self) -> None:
        for c in self._clients:
            await c.aclose()
        await self._watch_client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str | None = None,
        ok: tuple[int, ...] = (),
    ) -> tuple[int, dict[str, Any]]:
        """Send a request; returns (status, body). Statuses in `ok` are answers, not errors."""
        headers = {"Content-Type": content_type} if content_type else None
        backoff = Backoff(0.05, 5.0)
        for attempt in range(self._retries + 1):
            metrics.API_REQUESTS.labels(verb=method).inc()
            try:
                async with self._sem:
                    resp = await self._send(method, path, json, params, headers)
            except httpx.TransportError as e:
                metrics.API_ERRORS.labels(code="transport").inc()
                if attempt == self._retries:
                    raise ApiError(0, str(e), method, path) from e
                metrics.API_RETRIES.inc()
                await asyncio.sleep(backoff.next())
                continue
            if resp.status_code < 300 or resp.status_code in ok:
                body = _json_object(resp)
                if body is not None:
                    return resp.status_code, body
                if resp.status_code >= 300:
                    return resp.status_code, {"message": resp.text[:500]}
                # The API server answers every success with a JSON object: anything else is a
                # response cut short on its way (seen through a proxy), retried like one.
                metrics.API_ERRORS.labels(code="truncated").inc()
                if attempt == self._retries:
                    raise ApiError(0, f"a {resp.status_code} answer without a JSON body", method, path)
                metrics.API_RETRIES.inc()
                await asyncio.sleep(backoff.next())
                continue
            metrics.API_ERRORS.labels(code=str(resp.status_code)).inc()
            if resp.status_code == 401 and self._token_file and attempt == 0:
                token = f"Bearer {self._token_file.read_text().strip()}"
                for c in (*self._clients, self._watch_client):
                    c.headers["Authorization"] = token
                continue
            if resp.status_code in RETRY_STATUS and attempt < self._retries:
                metrics.API_RETRIES.inc()
                # The backoff advances either way, so a server that keeps asking sees longer waits.
                wait = backoff.next()
                await asyncio.sleep(retry_after(resp.headers.get("Retry-After"), cap=MAX_RETRY_AFTER) or wait)
                continue
            raise ApiError(resp.status_code, _json(resp), method, path)
        raise AssertionError("unreachable")

    async def _send(
        self, method: str, path: str, json: Any, params: dict[str, Any] | None, headers: dict[str, str] | None
    ) -> httpx.Response:
        """Through the client with the most free connections (the caller holds the semaphore, so
        one has room: no request waits inside a pool while another pool idles)."""
        i = max(range(len(self._room)), key=self._room.__getitem__)
        self._room[i] -= 1
        try:
            return await self._clients[i].request(method, path, json=json, params=params, headers=headers)
        finally:
            self._room[i] += 1

    async def create(self, path: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """POST; returns (created, body). "Already exists" is success: names are deterministic."""
        status, obj = await self.request("POST", path, json=body, ok=(409,))
        if status == 409:
            if obj.get("reason") != "AlreadyExists":
                raise ApiError(status, obj, "POST", path)
            return False, obj
        return True, obj

    async def get(self, path: str) -> dict[str, Any] | None:
        status, obj = await self.request("GET", path, ok=(404,))
        return None if status == 404 else obj

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        status, obj = await self.request(
            "PATCH", path, json=body, content_type="application/merge-patch+json", ok=(404,)
        )
        return None if status == 404 else obj

    async def strategic_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A strategic-merge patch (built-in kinds only): `$deleteFromPrimitiveList/finalizers`
        removes one finalizer without rewriting the list others change concurrently. None on 404."""
        status, obj = await self.request(
            "PATCH", path, json=body, content_type="application/strategic-merge-patch+json", ok=(404,)
        )
        return None if status == 404 else obj

    async def put(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self.request("PUT", path, json=body, ok=(404, 409))

    async def delete(self, path: str, propagation: str = "Background") -> bool:
        status, _ = await self.request("DELETE", path, json={"propagationPolicy": propagation}, ok=(404,))
        return status != 404

    async def list(self, path: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Every item, paginated so a 100,000-object list never sits in memory at once."""
        params = {"limit": 500, **params}
        while True:
            _, page = await self.request("GET", path, params=params)
            for item in page.get("items") or []:
                yield item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params["continue"] = token


def _json_object(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"message": resp.text[:500]}
    return body if isinstance(body, dict) else {"value": body}


def ns_path(group_version: str, namespace: str, plural: str, name: str | None = None, sub: str | None = None) -> str:
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path
