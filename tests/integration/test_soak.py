"""Soak (slow): continuous workload churn on the real control plane for APWA_SOAK_SECONDS (default
30 minutes): create, suspend, resume, edit parallelism, delete, at a bounded rate, with one operator
of its own. Asserted: the operator stays up, every workload left alone finishes, and its RSS and
open connections are flat (the last third of the run against the first third after warm-up).
The figures are printed for the issue's note. `make test-slow` runs it.
"""

from __future__ import annotations

import os
import random
import statistics
import time
import uuid
from pathlib import Path

import pytest
from helpers import temporary_namespace
from kubernetes import client
from operator_proc import OperatorProcess
from workloads import Workloads, workload

pytestmark = pytest.mark.slow
SECONDS = float(os.environ.get("APWA_SOAK_SECONDS", "1800"))
OPS_PER_SECOND = 1.0
KEPT_AT_ONCE = 15


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def flat(series: list[float]) -> tuple[float, float]:
    third = max(len(series) // 3, 1)
    return statistics.median(series[third : 2 * third] or series), statistics.median(series[-third:])


@pytest.mark.timeout(SECONDS + 900)
def test_workload_churn_keeps_the_operator_flat(api: client.ApiClient, crd: None, tmp_path: Path) -> None:
    rng = random.Random(20261126)
    name = f"apwa-soak-{uuid.uuid4().hex[:6]}"
    with temporary_namespace(api, name, {"apwa.dev/test": "soak"}) as ns:
        op = OperatorProcess(tmp_path / "op", args=["--namespace", ns])
        op.start()
        assert op.proc is not None
        w = Workloads(api, ns)
        live: dict[str, bool] = {}  # name -> suspended
        kept: list[str] = []  # never touched after creation: must finish
        retired = 0  # kept workloads seen Complete, then deleted (bounds what exists at once)
        rss: list[float] = []
        conns: list[float] = []
        ops = 0
        end = time.monotonic() + SECONDS
        next_sample = 0.0
        try:
            while time.monotonic() < end:
                assert op.proc.poll() is None, f"the operator exited: {op.log_path.read_text()[-3000:]}"
                ops += 1
                churn(w, rng, live, kept, ops)
                if len(kept) > KEPT_AT_ONCE:
                    oldest = kept.pop(0)
                    w.wait_condition(oldest, "Complete", timeout=300)
                    w.delete(oldest)
                    retired += 1
                if time.monotonic() >= next_sample:
                    rss.append(rss_mib(op.proc.pid))
                    conns.append(sockets(op.proc.pid))
                    next_sample = time.monotonic() + 30
                time.sleep(1 / OPS_PER_SECOND)  # the churn's rate, not a wait for a condition
            for n in live:
                w.patch(n, {"suspend": False})
            for n in [*kept, *live]:
                w.wait_condition(n, "Complete", timeout=600)
        finally:
            op.stop()
        (rss_mid, rss_end), (conn_mid, conn_end) = flat(rss), flat(conns)
        print(
            f"\nsoak {SECONDS:.0f} s, {ops} operations, {retired + len(kept) + len(live)} workloads seen Complete: "
            f"RSS {rss_mid:.0f} -> {rss_end:.0f} MiB (max {max(rss):.0f}), sockets {conn_mid:.0f} -> {conn_end:.0f}"
        )
        assert rss_end <= rss_mid * 1.25 + 10, "the operator's memory grows with churn"
        assert conn_end <= conn_mid * 1.25 + 5, "the operator's connections grow with churn"
        # The request pool holds at most 64 connections; watches and kopf's own add a few.
        assert max(conns) <= 64 + 16, f"more sockets than the pools allow: {max(conns)}"


def churn(w: Workloads, rng: random.Random, live: dict[str, bool], kept: list[str], ops: int) -> None:
    """One operation: mostly creations; edits and deletions of workloads made earlier."""
    roll = rng.random()
    if roll < 0.4 or not live:
        name = f"s{ops}"
        body = workload(name, {"range": {"end": rng.randint(5, 40)}}, {"KWOK_DELAY_MS": str(rng.randint(50, 500))})
        body["spec"]["parallelism"] = rng.randint(1, 10)
        w.create(body)
        if rng.random() < 0.3:
            kept.append(name)
        else:
            live[name] = False
        return
    name = rng.choice(sorted(live))
    if roll < 0.55:
        live[name] = not live[name]
        w.patch(name, {"suspend": live[name]})
    elif roll < 0.75:
        w.patch(name, {"parallelism": rng.randint(1, 20)})
    else:
        w.delete(name)
        del live[name]
