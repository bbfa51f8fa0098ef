"""A 20-subtask workload on the real node against the same workload on kwok nodes, same run.

Both sides: one ParallelWorkload (range 0..N, parallelism N, the worker image computing a square)
handled by the same out-of-cluster `apwa operator`; the only difference is where the pods land: the
real node (containers really start, run Python and write their termination message) or kwok's fake
nodes (pods "complete" at once). Sides interleave (real, kwok, real, kwok, ...) and repeat; it prints
each run, then the median and spread of the seconds from apply to Complete and of their ratio.

    make cluster REAL_NODE=1
    .venv/bin/python bench/real_vs_kwok.py [--n 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
from operator_proc import OperatorProcess  # noqa: E402
from real_node import RealNode, bring_up  # noqa: E402

PREFIX = "apwa-bench-rk-"


def workload(n: int, image: str, real: bool) -> dict:
    container = {
        "name": "square",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", "from apwa import worker; worker.emit(worker.item() ** 2)"],
    }
    spec: dict = {"containers": [container]}
    if real:
        RealNode.place(spec)
    return {
        "apiVersion": "apwa.dev/v1alpha1",
        "kind": "ParallelWorkload",
        "metadata": {"name": "squares"},
        "spec": {
            "decomposition": {"range": {"start": 0, "end": n}},
            "parallelism": n,
            "templates": {"default": {"podTemplate": {"spec": spec}}},
        },
    }


def run_once(node: RealNode, n: int, real: bool) -> float:
    ns = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    node.kubectl("create", "namespace", ns)
    try:
        t0 = time.monotonic()
        node.kubectl("-n", ns, "apply", "-f", "-", stdin=json.dumps(workload(n, node.images["worker"], real)))
        node.kubectl("-n", ns, "wait", "--for=condition=Complete", "pwl/squares", "--timeout=600s", timeout=620)
        elapsed = time.monotonic() - t0
        status = node.get("-n", ns, "parallelworkload", "squares")["status"]
        assert status["counts"]["succeeded"] == n, status
        return elapsed
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=false")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    node = bring_up()
    node.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    op = OperatorProcess(Path(tempfile.mkdtemp(prefix="apwa-bench-")), args=["--namespace", f"{PREFIX}*"])
    op.start()
    times: dict[str, list[float]] = {"real": [], "kwok": []}
    try:
        for i in range(args.repeat):
            for side in ("real", "kwok"):
                t = run_once(node, args.n, side == "real")
                times[side].append(t)
                print(f"run {i + 1} {side:4}: {t:6.2f} s to Complete ({args.n} subtasks)", flush=True)
    finally:
        op.stop()
    ratios = [r / k for r, k in zip(times["real"], times["kwok"], strict=True)]
    for side, values in (*times.items(), ("real/kwok", ratios)):
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"{side:9}: median {statistics.median(values):6.2f}  spread {spread}  (n={len(values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
