"""The scaling curve: one workload of N subtasks through the operator, beside the same-run
baselines, for N = 1,000 / 10,000 / 100,000 on the local control plane (kwok nodes).

Sides, interleaved (the order rotates every repeat: A B C, B C A, C A B, ...):
  operator   one ParallelWorkload of N subtasks, parallelism min(N, 10,000) (the CRD's limit), a fresh
             operator process
  raw        the same N Jobs created by a minimal async client (the API server's own limit)
  indexed    one Indexed Job of N completions (what Kubernetes does without one Job per subtask)

Per run: seconds until all N objects exist (operator, raw), seconds to Complete, subtasks/s,
API requests per subtask (the API server's apiserver_request_total, every client; and the
operator's own apwa_api_requests_total), 429s, the operator's peak RSS and CPU seconds, the
status' bytes, the bytes etcd holds (apiserver_storage_size_bytes) at the end, and the latency of
`GET` of the workload (what `kubectl get pwl` does) sampled every 0.5 s during the run (p50, p99).
Writes a CSV and a PNG (throughput against N, per side) to bench/results/; prints medians and
spreads of the ratios operator/raw and operator/indexed.

    eval "$(make -s cluster | tail -n 1)"
    make bench-scale                              # N = 1000 x3, 10000 x3
    .venv/bin/python bench/scale.py --n 1000 --n 10000 --n 100000 --repeats 3 --repeats-at-100k 1
    .venv/bin/python bench/scale.py --n 10000 --repeats 1 --side operator --profile bench/results/prof

APWA_ETCD_URL (etcd's client URL, e.g. http://127.0.0.1:32760: `ps` shows --listen-client-urls)
gives the etcd bytes where the API server has no apiserver_storage_size_bytes.
--side limits a run to some sides (repeatable). --from-csv CSV (repeatable) runs nothing: it prints
the table and draws the plot from earlier runs, e.g. the separate 100,000 runs beside 1,000 and 10,000.
--fresh-cluster deletes and makes the test cluster again before every run: each side starts on an
empty etcd, not paying for the previous side's 10,000 pods being deleted (minutes on kwok).
--profile DIR samples the operator with py-spy (`pip install py-spy`: a sampling profiler in its
own process, so the operator's code runs unchanged and its CPU seconds stay its own) into
DIR/operator-N<n>-<repeat>.txt, py-spy's raw collapsed stacks; bench/profile_top.py prints their top entries.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from apwa.api.models import MAX_CHUNK_SIZE, ParallelWorkloadSpec
from apwa.kube.client import Kube, ns_path
from apwa.planning import plan
from apwa.rendering import Owner, without_result_finalizer
from apwa.rendering.packed import render_chunk
from operator_bench import DELAY_MS, POD, REPO, free_port, indexed, namespace, peak_rss_mib, raw, spec, watch_jobs

RESULTS = REPO / "bench" / "results"
SIDES = ("operator", "packed", "raw", "indexed", "indexed-pod")
OPERATOR_SIDES = ("operator", "packed")
# Packed execution's chunk: subtasks per Indexed Job (--chunk).
CHUNK = 1000
WORKLOADS = "apwa.dev/v1alpha1"


@dataclass
class Run:
    n: int
    repeat: int
    side: str
    created_s: float = 0.0
    complete_s: float = 0.0
    subtasks_per_s: float = 0.0
    api_requests_per_subtask: float = 0.0
    operator_requests_per_subtask: float = 0.0
    operator_429s: float = 0.0
    operator_rss_mib: float = 0.0
    operator_cpu_s: float = 0.0
    status_bytes: int = 0
    etcd_bytes: float = 0.0
    get_p50_ms: float = 0.0
    get_p99_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


async def apiserver_metrics(kube: Kube) -> str:
    resp = await kube._client.get("/metrics")
    resp.raise_for_status()
    return resp.text


def total(text: str, name: str, where: str = "") -> float:
    """The sum of a metric's samples (whose labels contain `where`)."""
    out = 0.0
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M):
        if where in (m.group(1) or ""):
            out += float(m.group(2))
    return out


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """GETs one object every `every` seconds while the run lasts: the latency people see."""

    def __init__(self, kube: Kube, path: str, every: float = 0.5) -> None:
        self.kube, self.path, self.every = kube, path, every
        self.samples: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            t = time.perf_counter()
            await self.kube.get(self.path)
            self.samples.append(time.perf_counter() - t)
            await asyncio.sleep(self.every)

    def __enter__(self) -> Sampler:
        self.task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *_: object) -> None:
        assert self.task is not None
        self.task.cancel()

    def percentile(self, q: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def scrape(port: int) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def bench_spec(n: int, packed: bool, job_ttl: int | None = None) -> dict[str, Any]:
    """Both operator sides alike: packed pods share their env, so no `{{ index }}` in either."""
    out = spec(n, job_ttl)
    container = {**POD["spec"]["containers"][0], "env": [{"name": "KWOK_DELAY_MS", "value": DELAY_MS}]}
    out["templates"]["default"]["podTemplate"] = {"spec": {"containers": [container]}}
    if packed:
        out["execution"] = {"mode": "Packed", "chunkSize": CHUNK}
    return out


async def indexed_pod(kube: Kube, n: int) -> float:
    """One Indexed Job of N completions with the pod APWA renders (its isolation, env, plan volume;
    without the result finalizer, which only an operator releases), created directly: what the pod
    itself costs the control plane and kwok, apart from anything the operator does."""
    ns = await namespace(kube, "bench-indexed-pod")
    body = bench_spec(n, packed=True)
    body["execution"]["chunkSize"] = n
    s = ParallelWorkloadSpec.model_validate(body)
    job, plan_map = render_chunk(Owner("s", ns), s, plan(s), n)
    without_result_finalizer(job)
    started = time.perf_counter()
    watcher = asyncio.create_task(watch_jobs(kube, ns, 1, started))
    await kube.create(ns_path("v1", ns, "configmaps"), plan_map)
    await kube.create(ns_path("batch/v1", ns, "jobs"), job)
    _, complete = await watcher
    await kube.delete(f"/api/v1/namespaces/{ns}")
    return complete


def start_profiler(pid: int, out_dir: Path | None, run: Run) -> subprocess.Popen[bytes] | None:
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"operator-N{run.n}-{run.repeat}.txt"
    spy = Path(sys.executable).parent / "py-spy"
    cmd = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        spy.wait(timeout=120)


async def operator_side(kube: Kube, run: Run, profile: Path | None = None, job_ttl: int | None = None) -> None:
    port = free_port()
    log = open("/tmp/apwa-bench-scale-operator.log", "wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "apwa"),
            "operator",
            "--metrics-port",
            str(port),
            "--log-level",
            "WARNING",
            "--namespace",
            "scale-op-*",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=REPO,
    )
    try:
        await _healthy(proc, port)
        ns = await namespace(kube, "scale-op")
        packed = run.side == "packed"
        body = {"apiVersion": WORKLOADS, "kind": "ParallelWorkload", "metadata": {"name": "s"}}
        body["spec"] = bench_spec(run.n, packed, job_ttl)
        path = ns_path(WORKLOADS, ns, "parallelworkloads", "s")
        before_api, before_op = await apiserver_metrics(kube), scrape(port)
        cpu0 = cpu_seconds(proc.pid)
        spy = start_profiler(proc.pid, profile, run)
        started = time.perf_counter()
        jobs = -(-run.n // CHUNK) if packed else run.n
        watcher = asyncio.create_task(watch_jobs(kube, ns, jobs, started, "apwa.dev/workload=s"))
        with Sampler(kube, path) as sampler:
            await kube.create(ns_path(WORKLOADS, ns, "parallelworkloads"), body)
            run.created_s, _ = await watcher
            status = await _complete(kube, path)
            run.complete_s = time.perf_counter() - started
        stop_profiler(spy)
        after_api, after_op = await apiserver_metrics(kube), scrape(port)
        run.operator_cpu_s = cpu_seconds(proc.pid) - cpu0
        run.operator_rss_mib = peak_rss_mib(proc.pid)
        run.status_bytes = len(json.dumps(status, separators=(",", ":")))
        run.get_p50_ms, run.get_p99_ms = sampler.percentile(0.5), sampler.percentile(0.99)
        name = "apwa_api_requests_total"
        run.operator_requests_per_subtask = (total(after_op, name) - total(before_op, name)) / run.n
        run.operator_429s = total(after_op, "apwa_api_errors_total", 'code="429"') - total(
            before_op, "apwa_api_errors_total", 'code="429"'
        )
        _api_figures(run, before_api, after_api)
        await kube.delete(f"/api/v1/namespaces/{ns}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # a loaded machine: the figures are taken already
            proc.kill()
            proc.wait()
        log.close()


async def _healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            scrape(port)
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("operator did not start: /tmp/apwa-bench-scale-operator.log") from None
            await asyncio.sleep(0.2)


async def _complete(kube: Kube, path: str) -> dict[str, Any]:
    while True:
        w = await kube.get(path)
        status = (w or {}).get("status") or {}
        if any(c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions") or []):
            return status
        await asyncio.sleep(0.2)


def _api_figures(run: Run, before: str, after: str) -> None:
    run.api_requests_per_subtask = (
        total(after, "apiserver_request_total") - total(before, "apiserver_request_total")
    ) / run.n
    run.etcd_bytes = total(after, "apiserver_storage_size_bytes") or etcd_db_bytes()


def etcd_db_bytes() -> float:
    """etcd's database file (what its quota is checked against), from etcd's own metrics at
    $APWA_ETCD_URL: the API server of the kwok clusters (1.36) exports no
    apiserver_storage_size_bytes."""
    url = os.environ.get("APWA_ETCD_URL")
    if not url:
        return 0.0
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    return total(text, "etcd_mvcc_db_total_size_in_bytes")


async def baseline_side(kube: Kube, run: Run, measure: Callable[[Kube, int], Awaitable[Any]]) -> None:
    before = await apiserver_metrics(kube)
    out = await measure(kube, run.n)
    after = await apiserver_metrics(kube)
    if isinstance(out, tuple):
        run.created_s, run.complete_s = out
    else:
        run.complete_s = out
    _api_figures(run, before, after)


# Namespaces the sides make (each deletes its own when it ends).
BENCH_NAMESPACES = ("scale-op-", "bench-")


async def settle(kube: Kube, timeout: float = 900.0) -> None:
    """Wait until the previous side's namespace is gone: deleting 10,000 pods keeps the API server
    and kwok busy for minutes, and a side started meanwhile pays for its predecessor's cleanup
    (at 10,000 the first three runs of a session without this slowed run after run)."""
    deadline = time.monotonic() + timeout
    while True:
        body = await kube.get("/api/v1/namespaces")
        left = [
            m["metadata"]["name"]
            for m in (body or {}).get("items", [])
            if m["metadata"]["name"].startswith(BENCH_NAMESPACES)
        ]
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespaces still being deleted after {timeout:.0f} s: {left}")
        await asyncio.sleep(2)


async def one(
    kube: Kube, n: int, repeat: int, side: str, profile: Path | None = None, job_ttl: int | None = None
) -> Run:
    run = Run(n, repeat, side)
    await settle(kube)
    if side in OPERATOR_SIDES:
        await operator_side(kube, run, profile, job_ttl)
    else:
        if side == "indexed-pod" and n > MAX_CHUNK_SIZE:
            run.extra["skipped"] = f"one Indexed Job of the rendered pod is only made up to {MAX_CHUNK_SIZE}"
            print(f"  N={n:>6} #{repeat} {side:<9} skipped: {run.extra['skipped']}", flush=True)
            return run
        await baseline_side(kube, run, {"raw": raw, "indexed": indexed, "indexed-pod": indexed_pod}[side])
    run.subtasks_per_s = n / run.complete_s
    print(f"  N={n:>6} #{repeat} {side:<9} complete {run.complete_s:8.1f} s  {run.subtasks_per_s:7.1f}/s", flush=True)
    return run


def summary(runs: list[Run]) -> None:
    head = f"{'N':>7} {'side':<12} {'runs':>4} {'created s':>10} {'complete s':>11} {'subtasks/s':>11}"
    print(f"\n{head}  (median; complete min..max)")
    for n in sorted({r.n for r in runs}):
        for side in SIDES:
            mine = [r for r in runs if r.n == n and r.side == side]
            if mine:
                c = [r.complete_s for r in mine]
                print(
                    f"{n:>7} {side:<12} {len(mine):>4} {statistics.median(r.created_s for r in mine):>10.1f} "
                    f"{statistics.median(c):>11.1f} {statistics.median(r.subtasks_per_s for r in mine):>11.1f}"
                    f"  ({min(c):.1f}..{max(c):.1f} s)"
                )
    print("\nratios of medians (spread: min..max of the per-repeat ratios)")
    for n in sorted({r.n for r in runs}):
        by = {s: [r for r in runs if r.n == n and r.side == s] for s in SIDES}
        pairs_of = (
            ("operator", "raw"),
            ("operator", "indexed"),
            ("packed", "indexed"),
            ("packed", "operator"),
            ("packed", "indexed-pod"),
            ("indexed-pod", "indexed"),
        )
        for mine, base in pairs_of:
            pairs = [
                a.complete_s / b.complete_s for a, b in zip(by[mine], by[base], strict=False)
            ]  # same repeat: the sides ran back to back
            if pairs:
                print(
                    f"N={n:>6} {mine}/{base:<8} Complete: median {statistics.median(pairs):.2f} "
                    f"({min(pairs):.2f}..{max(pairs):.2f}, {len(pairs)} pairs)"
                )
        for side in OPERATOR_SIDES:
            summarise_side(n, side, by[side])


def summarise_side(n: int, side: str, op: list[Run]) -> None:
    if op:
        med = {
            f.name: statistics.median(getattr(r, f.name) for r in op)
            for f in fields(Run)
            if f.name not in ("n", "repeat", "side", "extra")
        }
        print(
            f"N={n:>6} {side}: {med['subtasks_per_s']:.0f} subtasks/s, RSS {med['operator_rss_mib']:.0f} MiB, "
            f"CPU {med['operator_cpu_s']:.0f} s, its requests/subtask {med['operator_requests_per_subtask']:.2f}, "
            f"all requests/subtask {med['api_requests_per_subtask']:.1f}, 429s {med['operator_429s']:.0f}, "
            f"status {med['status_bytes']:.0f} B, GET p50/p99 {med['get_p50_ms']:.0f}/{med['get_p99_ms']:.0f} ms, "
            f"etcd {med['etcd_bytes'] / 2**20:.0f} MiB"
        )


def write(runs: list[Run], stamp: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale-{stamp}.csv"
    names = [f.name for f in fields(Run) if f.name != "extra"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in runs:
            w.writerow({k: v for k, v in asdict(r).items() if k in names})
    return path


def read(paths: list[Path]) -> list[Run]:
    """Runs from earlier CSVs (--from-csv): one plot and one table over sizes run separately, e.g.
    N = 100,000 (an hour per side) apart from the interleaved 1,000 and 10,000. Ratios pair runs of
    the same N and repeat, so give each N's runs from one invocation."""
    names = {f.name for f in fields(Run)} - {"extra"}
    cast: dict[str, Any] = {"n": int, "repeat": int, "status_bytes": int, "side": str}
    runs: list[Run] = []
    for path in paths:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                runs.append(Run(**{k: cast.get(k, float)(v) for k, v in row.items() if k in names}))
    return runs


def plot(runs: list[Run], stamp: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for side, marker in zip(SIDES, "oPsdx", strict=True):
        ns = sorted({r.n for r in runs if r.side == side})
        if not ns:
            continue
        med = [statistics.median(r.subtasks_per_s for r in runs if r.side == side and r.n == n) for n in ns]
        lo = [min(r.subtasks_per_s for r in runs if r.side == side and r.n == n) for n in ns]
        hi = [max(r.subtasks_per_s for r in runs if r.side == side and r.n == n) for n in ns]
        ax.errorbar(
            ns,
            med,
            yerr=[[m - a for m, a in zip(med, lo, strict=True)], [b - m for m, b in zip(med, hi, strict=True)]],
            marker=marker,
            capsize=3,
            label=side,
        )
    ax.set_xscale("log")
    ax.set_xlabel("subtasks in one workload (N)")
    ax.set_ylabel("subtasks completed per second (median, min..max)")
    ax.set_title("APWA on kwok: throughput against N (same-run baselines)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = RESULTS / f"scale-{stamp}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    latest = RESULTS / "scale-latest.png"
    fig.savefig(latest, dpi=110)
    return path


def fresh_cluster() -> None:
    """--fresh-cluster: delete the test cluster and make it again before a run, so every side starts
    on an empty etcd with nothing left to clean up (the API server's port and the kubeconfig's path
    stay; its certificates and etcd's port change, hence a new client and APWA_ETCD_URL after)."""
    for cmd in ("down", "up"):
        done = subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), cmd], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"hack/cluster.sh {cmd} failed: {done.stderr[-2000:]}")
    name = os.environ.get("APWA_CLUSTER_NAME", "apwa")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone meanwhile
        if args[0].endswith("/etcd") and f"/clusters/{name}/" in args[0]:
            for a in args:
                if a.startswith("--listen-client-urls="):
                    os.environ["APWA_ETCD_URL"] = a.split("=", 1)[1].split(",")[0]
    subprocess.run(["kubectl", "apply", "--server-side", "-f", str(REPO / "crds")], check=True, capture_output=True)


async def main_async(
    ns: list[int],
    repeats: int,
    repeats_at_100k: int,
    sides: tuple[str, ...] = SIDES,
    profile: Path | None = None,
    job_ttl: int | None = None,
    stamp: str = "",
    fresh: bool = False,
) -> list[Run]:
    """Every run is written to the CSV as soon as it ends, and a side that fails is reported and
    skipped: hours of runs are not lost to one failure at the end."""
    subprocess.run(["kubectl", "apply", "--server-side", "-f", str(REPO / "crds")], check=True, capture_output=True)
    kube = Kube.from_config(concurrency=64)
    runs: list[Run] = []
    try:
        for n in ns:
            reps = repeats_at_100k if n >= 100_000 else repeats
            for rep in range(reps):
                order = sides[rep % len(sides) :] + sides[: rep % len(sides)]
                for side in order:
                    try:
                        if fresh:
                            await kube.close()
                            fresh_cluster()
                            kube = Kube.from_config(concurrency=64)
                        run = await one(kube, n, rep, side, profile, job_ttl)
                    except Exception as e:  # reported; the other sides go on
                        print(f"  N={n:>6} #{rep} {side:<9} FAILED: {e!r}", flush=True)
                        continue
                    if "skipped" not in run.extra:
                        runs.append(run)
                        write(runs, stamp)
    finally:
        await kube.close()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="subtasks (repeatable); default 1000 and 10000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-at-100k", type=int, default=1)
    ap.add_argument("--side", action="append", choices=SIDES, help="only these sides (repeatable); default all")
    ap.add_argument("--chunk", type=int, default=CHUNK, help="packed: subtasks per Indexed Job")
    ap.add_argument("--profile", type=Path, help="sample the operator with py-spy into this directory")
    ap.add_argument(
        "--job-ttl",
        type=int,
        help="ttlSecondsAfterFinished of the operator's Jobs, set once recorded (keeps etcd bounded at 100,000)",
    )
    ap.add_argument(
        "--from-csv",
        type=Path,
        action="append",
        help="no runs: print the table and draw the plot from these CSVs (repeatable)",
    )
    ap.add_argument(
        "--fresh-cluster",
        action="store_true",
        help="delete and make the test cluster again before every run (an empty etcd for each side)",
    )
    args = ap.parse_args()
    globals()["CHUNK"] = args.chunk
    if args.from_csv:
        runs = read(args.from_csv)
        summary(runs)
        stamp = "merged-" + time.strftime("%Y%m%d-%H%M%S")
        print(f"\nCSV: {write(runs, stamp)}\nplot: {plot(runs, stamp)}")
        return
    if not os.environ.get("KUBECONFIG"):
        sys.exit('set KUBECONFIG first: eval "$(make -s cluster | tail -n 1)"')
    stamp = time.strftime("%Y%m%d-%H%M%S")  # before the runs: main_async writes the CSV as it goes
    sides = tuple(args.side or SIDES)
    runs = asyncio.run(
        main_async(
            args.n or [1000, 10_000],
            args.repeats,
            args.repeats_at_100k,
            sides,
            args.profile,
            args.job_ttl,
            stamp,
            args.fresh_cluster,
        )
    )
    summary(runs)
    print(f"\nCSV: {write(runs, stamp)}\nplot: {plot(runs, stamp)}")


if __name__ == "__main__":
    main()
