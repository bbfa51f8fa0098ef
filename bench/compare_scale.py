"""The operator side of bench/scale.py for two commits, interleaved: base head, head base, ...

The base commit is checked out as a temporary `git worktree`; both sides run this tree's
bench/scale.py, the base with its own `operator/` first on PYTHONPATH (the operator subprocess
inherits it), so only the operator's code differs. Prints, per figure, each side's values, their
medians and the head/base ratio of the medians, with each side's spread (min..max).

    eval "$(APWA_CLUSTER_NAME=prof bash hack/cluster.sh up | tail -n 1)"
    .venv/bin/python bench/compare_scale.py --base ade4070 --n 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = (
    "complete_s",
    "subtasks_per_s",
    "operator_cpu_s",
    "operator_rss_mib",
    "operator_requests_per_subtask",
    "api_requests_per_subtask",
    "operator_429s",
    "status_bytes",
    "get_p99_ms",
)


def run_side(code_root: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{code_root / 'operator'}:{REPO / 'bench'}"}
    cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--n", str(n), "--repeats", "1", "--side", "operator"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
    m = re.search(r"^CSV: (.+)$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        sys.exit(f"{code_root}: scale.py failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    with open(m.group(1)) as f:
        row = next(csv.DictReader(f))
    return {k: float(row[k]) for k in FIGURES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not os.environ.get("KUBECONFIG"):
        sys.exit('set KUBECONFIG first: eval "$(make -s cluster | tail -n 1)"')
    runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="apwa-base-") as tmp:
        base_root = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_root), args.base], check=True)
        try:
            for i in range(args.repeats):
                order = ("base", "head") if i % 2 == 0 else ("head", "base")
                for side in order:
                    runs[side].append(run_side(base_root if side == "base" else REPO, args.n))
                    fig = runs[side][-1]
                    print(
                        f"  #{i} {side}: complete {fig['complete_s']:.1f} s, CPU {fig['operator_cpu_s']:.1f} s, "
                        f"RSS {fig['operator_rss_mib']:.0f} MiB, "
                        f"requests/subtask {fig['operator_requests_per_subtask']:.2f}",
                        flush=True,
                    )
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_root)], check=False)
    print(f"\nN={args.n}, {args.repeats} interleaved pairs, base {args.base}; median (min..max)")
    for k in FIGURES:
        b, h = [r[k] for r in runs["base"]], [r[k] for r in runs["head"]]
        ratio = statistics.median(h) / statistics.median(b) if statistics.median(b) else float("nan")
        print(
            f"{k:<31} base {statistics.median(b):9.2f} ({min(b):.2f}..{max(b):.2f})   "
            f"head {statistics.median(h):9.2f} ({min(h):.2f}..{max(h):.2f})   head/base {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
