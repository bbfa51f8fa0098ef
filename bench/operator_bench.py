"""Operator throughput on the local control plane, as ratios against baselines in the same run.

For each N:
  (a) the operator: apply one ParallelWorkload of N subtasks with parallelism N; time until all N
      Jobs exist and until the workload is Complete;
  (b) the API server's own limit: the same N Jobs created by a minimal async client (no operator);
  (c) one native Indexed Job with N completions (parallelism N) until Complete.
Prints a/b and a/c, status patches per second and the operator's peak RSS.

    eval "$(make -s cluster | tail -n 1)"
    .venv/bin/python bench/operator_bench.py --n 1000 [--n 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from apwa.api.models import ParallelWorkloadSpec
from apwa.kube.client import Kube, ns_path
from apwa.planning import plan
from apwa.rendering import Owner, render_job, without_result_finalizer

REPO = Path(__file__).resolve().parents[1]
DELAY_MS = "100"
POD = {
    "spec": {
        "containers": [
            {
                "name": "w",
                "image": "registry.invalid/w:0",
                "command": ["w"],
                "env": [{"name": "KWOK_DELAY_MS", "value": DELAY_MS}, {"name": "KWOK_MESSAGE", "value": "{{ index }}"}],
            }
        ]
    }
}


MAX_PARALLELISM = 10_000  # the CRD's limit on spec.parallelism


def spec(n: int, job_ttl: int | None = None) -> dict[str, Any]:
    """N subtasks, all at once up to the CRD's limit; `job_ttl`: the template's
    ttlSecondsAfterFinished (set on each Job once its outcome is recorded)."""
    template: dict[str, Any] = {"podTemplate": POD}
    if job_ttl is not None:
        template["ttlSecondsAfterFinished"] = job_ttl
    return {
        "decomposition": {"range": {"end": n}},
        "parallelism": min(n, MAX_PARALLELISM),
        "templates": {"default": template},
    }


async def namespace(kube: Kube, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    deadline = time.monotonic() + 60
    while await kube.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default") is None:
        if time.monotonic() > deadline:
            raise TimeoutError("default ServiceAccount never appeared")
        await asyncio.sleep(0.1)
    return ns


async def watch_jobs(kube: Kube, ns: str, n: int, started: float, selector: str = "") -> tuple[float, float]:
    """Seconds from `started` until n Jobs exist and until n Jobs are Complete. One watch, resumed
    from its last resourceVersion when the API server ends it (runs at 100,000 last longer than
    a watch), from a list when that version is too old."""
    seen: set[str] = set()
    done: set[str] = set()
    all_exist = 0.0
    rv = ""
    path = ns_path("batch/v1", ns, "jobs")
    while True:
        if not rv:
            rv = await _list_jobs(kube, path, selector, seen, done)
        params = {
            "watch": "1",
            "labelSelector": selector,
            "timeoutSeconds": "600",
            "allowWatchBookmarks": "true",
            "resourceVersion": rv,
        }
        async with kube._client.stream("GET", path, params=params, timeout=None) as resp:
            async for line in resp.aiter_lines():
                if not line:
                    continue
                ev = json.loads(line)
                job = ev["object"]
                if ev["type"] == "ERROR":
                    rv = ""  # 410 Gone: list again
                    break
                rv = job["metadata"].get("resourceVersion", rv)
                if ev["type"] == "BOOKMARK":
                    continue
                _note_job(job, seen, done)
                if len(seen) >= n and not all_exist:
                    all_exist = time.perf_counter() - started
                if len(done) >= n:
                    return all_exist or time.perf_counter() - started, time.perf_counter() - started


def _note_job(job: dict[str, Any], seen: set[str], done: set[str]) -> None:
    name = job["metadata"]["name"]
    seen.add(name)
    conds = (job.get("status") or {}).get("conditions") or []
    if any(c["type"] == "Complete" and c["status"] == "True" for c in conds):
        done.add(name)


async def _list_jobs(kube: Kube, path: str, selector: str, seen: set[str], done: set[str]) -> str:
    params: dict[str, Any] = {"labelSelector": selector, "limit": 500}
    while True:
        _, page = await kube.request("GET", path, params=params)
        for job in page.get("items") or []:
            _note_job(job, seen, done)
        meta = page.get("metadata") or {}
        if not meta.get("continue"):
            return str(meta.get("resourceVersion", ""))
        params["continue"] = meta["continue"]


async def raw(kube: Kube, n: int) -> tuple[float, float]:
    ns = await namespace(kube, "bench-raw")
    s = ParallelWorkloadSpec.model_validate(spec(n))
    # The baseline is Jobs without an operator: nothing would release the pods' result finalizer.
    jobs = [without_result_finalizer(render_job(Owner("raw", ns), s, st, n)) for st in plan(s)]
    started = time.perf_counter()
    watcher = asyncio.create_task(watch_jobs(kube, ns, n, started))
    await asyncio.gather(*(kube.create(ns_path("batch/v1", ns, "jobs"), j) for j in jobs))
    created = time.perf_counter() - started
    _, complete = await watcher
    await kube.delete(f"/api/v1/namespaces/{ns}")
    return created, complete


async def indexed(kube: Kube, n: int) -> float:
    ns = await namespace(kube, "bench-indexed")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "indexed"},
        "spec": {
            "completions": n,
            "parallelism": n,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {"spec": {**POD["spec"], "restartPolicy": "Never"}},
        },
    }
    started = time.perf_counter()
    watcher = asyncio.create_task(watch_jobs(kube, ns, 1, started))
    await kube.create(ns_path("batch/v1", ns, "jobs"), job)
    _, complete = await watcher
    await kube.delete(f"/api/v1/namespaces/{ns}")
    return complete


def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def with_operator(kube: Kube, n: int) -> tuple[float, float, float, float]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "apwa"), "operator", "--metrics-port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=open("/tmp/apwa-bench-operator.log", "wb"),
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("operator did not start; see /tmp/apwa-bench-operator.log") from None
                await asyncio.sleep(0.2)
        ns = await namespace(kube, "bench-op")
        body = {
            "apiVersion": "apwa.dev/v1alpha1",
            "kind": "ParallelWorkload",
            "metadata": {"name": "b"},
            "spec": spec(n),
        }
        patches0 = metric(port, "apwa_status_patches_total")
        started = time.perf_counter()
        watcher = asyncio.create_task(watch_jobs(kube, ns, n, started, "apwa.dev/workload=b"))
        await kube.create(ns_path("apwa.dev/v1alpha1", ns, "parallelworkloads"), body)
        all_exist, _ = await watcher
        while True:
            w = await kube.get(ns_path("apwa.dev/v1alpha1", ns, "parallelworkloads", "b"))
            conds = ((w or {}).get("status") or {}).get("conditions") or []
            if any(c["type"] == "Complete" and c["status"] == "True" for c in conds):
                break
            await asyncio.sleep(0.05)
        complete = time.perf_counter() - started
        patches = metric(port, "apwa_status_patches_total") - patches0
        rss = peak_rss_mib(proc.pid)
        await kube.delete(f"/api/v1/namespaces/{ns}")
        return all_exist, complete, patches / complete, rss
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


async def main_async(ns_list: list[int]) -> None:
    subprocess.run(["kubectl", "apply", "--server-side", "-f", str(REPO / "crds")], check=True, capture_output=True)
    kube = Kube.from_config(concurrency=64)
    try:
        for n in ns_list:
            b_created, b_complete = await raw(kube, n)
            c_complete = await indexed(kube, n)
            a_exist, a_complete, patch_rate, rss = await with_operator(kube, n)
            print(f"\nN = {n}   (pods finish {DELAY_MS} ms after starting; kwok nodes)")
            print(f"{'':<44}{'all Jobs exist s':>18}{'Complete s':>12}")
            print(f"{'(a) operator, parallelism N':<44}{a_exist:>18.2f}{a_complete:>12.2f}")
            print(f"{'(b) raw async client, N Jobs':<44}{b_created:>18.2f}{b_complete:>12.2f}")
            print(f"{'(c) one Indexed Job, N completions':<44}{'-':>18}{c_complete:>12.2f}")
            print(f"raw creation rate: {n / b_created:,.0f} Jobs/s; operator: {n / a_exist:,.0f} Jobs/s")
            print(
                f"a/b (Jobs exist): {a_exist / b_created:.2f}   a/b (Complete): {a_complete / b_complete:.2f}   "
                f"a/c (Complete): {a_complete / c_complete:.2f}"
            )
            print(f"status patches/s: {patch_rate:.2f}   operator peak RSS: {rss:.0f} MiB")
    finally:
        await kube.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, action="append", help="subtasks (repeatable); default 1000")
    args = ap.parse_args()
    if not os.environ.get("KUBECONFIG"):
        sys.exit('set KUBECONFIG first: eval "$(make -s cluster | tail -n 1)"')
    asyncio.run(main_async(args.n or [1000]))


if __name__ == "__main__":
    main()
