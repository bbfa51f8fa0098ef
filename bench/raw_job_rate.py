"""Raw Job throughput of the control plane, without the operator: the ceiling APWA works under.

Creates N Jobs (one pod each, finished by kwok after KWOK_DELAY_MS) in a fresh namespace with a
minimal asyncio client (httpx, bounded concurrency, retries on 429), then reports

* the creation rate (Jobs/s accepted by the API server),
* the time until every Job is Complete (watched, counted from the first create),
* the time to delete the namespace (namespace controller + garbage collector).

Prints figures only; nothing is asserted about wall-clock time.

    eval "$(bash hack/cluster.sh up | tail -n 1)"
    .venv/bin/python bench/raw_job_rate.py --n 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Kubeconfig:
    server: str
    ssl_context: ssl.SSLContext | bool
    headers: dict[str, str] = field(default_factory=dict)


def _materialise(entry: dict[str, Any], key: str, base: Path, tmpdir: Path) -> str | None:
    """Path of a kubeconfig file reference (``key``) or of its inline ``key-data`` (base64)."""
    if entry.get(key):
        path = Path(entry[key])
        return str(path if path.is_absolute() else base / path)
    data = entry.get(f"{key}-data")
    if data:
        out = tmpdir / key
        out.write_bytes(base64.b64decode(data))
        return str(out)
    return None


def load_kubeconfig(path: str, tmpdir: Path) -> Kubeconfig:
    """Current context of a kubeconfig: server, CA, client certificate or bearer token."""
    doc = yaml.safe_load(Path(path).read_text())
    base = Path(path).resolve().parent
    ctx_name = doc.get("current-context") or doc["contexts"][0]["name"]
    ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
    user = next((u["user"] for u in doc.get("users") or [] if u["name"] == ctx.get("user")), {}) or {}

    verify: ssl.SSLContext | bool
    if cluster.get("insecure-skip-tls-verify"):
        verify = False
    else:
        verify = ssl.create_default_context(cafile=_materialise(cluster, "certificate-authority", base, tmpdir))
        cert = _materialise(user, "client-certificate", base, tmpdir)
        key = _materialise(user, "client-key", base, tmpdir)
        if cert and key:
            verify.load_cert_chain(cert, key)
    headers = {}
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return Kubeconfig(server=cluster["server"].rstrip("/"), ssl_context=verify, headers=headers)


def default_kubeconfig() -> str:
    """$KUBECONFIG, else the local cluster's (never ~/.kube/config: this creates thousands of Jobs)."""
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"].split(os.pathsep)[0]
    line = subprocess.run(
        ["bash", str(REPO / "hack" / "cluster.sh"), "env"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return line.split("KUBECONFIG=", 1)[1].split(" ", 1)[0]


def job_body(index: int, delay_ms: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"raw-{index:06d}", "labels": {"apwa.dev/bench": "raw-job-rate"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"apwa.dev/bench": "raw-job-rate"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/apwa/noop:0",
                            "env": [{"name": "KWOK_DELAY_MS", "value": str(delay_ms)}],
                        }
                    ],
                },
            },
        },
    }


async def request(
    client: httpx.AsyncClient, method: str, url: str, stats: dict[str, int], **kwargs: Any
) -> httpx.Response:
    """One API call; retries 429 (honouring Retry-After) and transient connection errors."""
    for attempt in range(50):
        try:
            resp = await client.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.PoolTimeout):
            stats["conn_retries"] += 1
            await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            continue
        if resp.status_code == 429 or (resp.status_code >= 500 and "Retry-After" in resp.headers):
            stats["429"] += 1
            await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
            continue
        return resp
    raise RuntimeError(f"{method} {url}: still failing after 50 attempts")


async def wait_default_service_account(client: httpx.AsyncClient, ns: str, stats: dict[str, int]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        resp = await request(client, "GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default", stats)
        if resp.status_code == 200:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no ServiceAccount default in {ns} after 60s")


def is_complete(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Complete" and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def is_failed(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Failed" and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


async def watch_until_complete(client: httpx.AsyncClient, ns: str, n: int, stats: dict[str, int]) -> None:
    """List+watch the namespace's Jobs until ``n`` are Complete (or any Failed, an error)."""
    url = f"/apis/batch/v1/namespaces/{ns}/jobs"
    complete: set[str] = set()
    while True:
        resp = await request(client, "GET", url, stats, params={"limit": "500"})
        resp.raise_for_status()
        page = resp.json()
        items = list(page["items"])
        while page["metadata"].get("continue"):
            resp = await request(
                client, "GET", url, stats, params={"limit": "500", "continue": page["metadata"]["continue"]}
            )
            resp.raise_for_status()
            page = resp.json()
            items.extend(page["items"])
        rv = page["metadata"]["resourceVersion"]
        for job in items:
            if is_failed(job):
                raise RuntimeError(f"Job {job['metadata']['name']} failed")
            if is_complete(job):
                complete.add(job["metadata"]["name"])
        if len(complete) >= n:
            return
        params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
        try:
            async with client.stream("GET", url, params=params, timeout=httpx.Timeout(10, read=330)) as stream:
                if stream.status_code != 200:
                    continue  # e.g. 410 Gone: relist
                async for line in stream.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        break  # relist
                    obj = event["object"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        if is_failed(obj):
                            raise RuntimeError(f"Job {obj['metadata']['name']} failed")
                        if is_complete(obj):
                            complete.add(obj["metadata"]["name"])
                            if len(complete) >= n:
                                return
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout):
            stats["watch_restarts"] += 1


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        kc = load_kubeconfig(args.kubeconfig or default_kubeconfig(), Path(tmp))
        limits = httpx.Limits(max_connections=args.concurrency + 2, max_keepalive_connections=args.concurrency + 2)
        async with httpx.AsyncClient(
            base_url=kc.server, verify=kc.ssl_context, headers=kc.headers, limits=limits, timeout=30
        ) as client:
            return await bench(client, args)


async def bench(client: httpx.AsyncClient, args: argparse.Namespace) -> int:
    stats = {"429": 0, "conn_retries": 0, "watch_restarts": 0}
    ns = f"bench-raw-{uuid.uuid4().hex[:6]}"
    ns_body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    (await request(client, "POST", "/api/v1/namespaces", stats, json=ns_body)).raise_for_status()
    print(f"namespace {ns}: creating {args.n} Jobs, concurrency {args.concurrency}, pod delay {args.delay_ms}ms")
    try:
        await wait_default_service_account(client, ns, stats)
        watcher = asyncio.create_task(watch_until_complete(client, ns, args.n, stats))
        sem = asyncio.Semaphore(args.concurrency)
        url = f"/apis/batch/v1/namespaces/{ns}/jobs"

        async def create(i: int) -> None:
            async with sem:
                resp = await request(client, "POST", url, stats, json=job_body(i, args.delay_ms))
                if resp.status_code != 201:
                    raise RuntimeError(f"create Job {i}: HTTP {resp.status_code} {resp.text[:300]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(create(i) for i in range(args.n)))
        t_created = time.perf_counter() - t0
        print(f"created   {args.n} Jobs in {t_created:7.2f}s = {args.n / t_created:8.1f} Jobs/s")

        try:
            await asyncio.wait_for(asyncio.shield(watcher), timeout=args.timeout)
        except TimeoutError:
            watcher.cancel()
            print(f"TIMEOUT: not all Jobs Complete after {args.timeout:g}s", file=sys.stderr)
            return 1
        t_done = time.perf_counter() - t0
        print(
            f"complete  {args.n} Jobs in {t_done:7.2f}s = {args.n / t_done:8.1f} Jobs/s "
            f"(last Complete {t_done - t_created:.2f}s after the last create)"
        )
        print(f"retries: {stats['429']} x 429/Retry-After, {stats['conn_retries']} connection errors")
        return 0
    finally:
        if args.keep:
            print(f"kept namespace {ns}")
        else:
            t1 = time.perf_counter()
            await request(client, "DELETE", f"/api/v1/namespaces/{ns}", stats, json={"propagationPolicy": "Background"})
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                resp = await request(client, "GET", f"/api/v1/namespaces/{ns}", stats)
                if resp.status_code == 404:
                    print(f"cleanup   namespace {ns} deleted in {time.perf_counter() - t1:.2f}s")
                    break
                await asyncio.sleep(0.5)
            else:
                print(f"cleanup: namespace {ns} still terminating after {args.timeout:g}s", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of Jobs (default 1000)")
    parser.add_argument("--concurrency", type=int, default=32, help="in-flight creates (default 32)")
    parser.add_argument("--delay-ms", type=int, default=100, help="KWOK_DELAY_MS of each pod (default 100)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for completion/cleanup")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, else the hack/cluster.sh cluster")
    parser.add_argument("--keep", action="store_true", help="do not delete the namespace")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
