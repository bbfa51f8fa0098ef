"""Compare the operator and plan/render benchmarks of two commits, side by side, interleaved.

The base commit is checked out as a temporary `git worktree`; both sides run in this virtualenv,
the base by putting its `operator/` first on PYTHONPATH (the operator subprocess inherits it).
Both run the benchmark scripts of the working tree, so only the code under test differs. Runs
alternate base, head, base, head, ... so that drift of a shared machine hits both sides alike,
and each head run is compared with the base run next to it.

    eval "$(APWA_CLUSTER_NAME=core bash hack/cluster.sh up | tail -n 1)"
    .venv/bin/python bench/compare_commits.py [--base 1118578] [--repeats 3] [--n 1000]

Prints, per figure, the head/base ratio of every pair, their median and spread (min..max).
Below 1 the head is faster.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# (figure, script, pattern) - the first group of the pattern is the figure, in seconds or a factor.
FIGURES = [
    ("operator: all Jobs exist (s)", "operator", r"\(a\) operator, parallelism N\s+([\d.]+)"),
    ("operator: Complete (s)", "operator", r"\(a\) operator, parallelism N\s+[\d.]+\s+([\d.]+)"),
    ("operator/raw client: Complete", "operator", r"a/b \(Complete\): ([\d.]+)"),
    ("status patches per second", "operator", r"status patches/s: ([\d.]+)"),
    ("plan + render 1 Job each (s)", "plan", r"plan \+ render Jobs\s+([\d.]+)"),
    ("plan items (s)", "plan", r"plan items\s+([\d.]+)"),
]


@dataclass
class Run:
    side: str
    out: dict[str, str]  # script -> its stdout


def run_side(side: str, code_root: Path, n: int, plan_n: int) -> Run:
    env = {**os.environ, "PYTHONPATH": str(code_root / "operator")}
    out = {}
    for script, args in (("operator", ["--n", str(n)]), ("plan", ["--n", str(plan_n)])):
        path = REPO / "bench" / ("operator_bench.py" if script == "operator" else "plan_render.py")
        r = subprocess.run([PYTHON, str(path), *args], env=env, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            sys.exit(f"{side}: {path.name} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        out[script] = r.stdout
    print(f"  {side}: done", flush=True)
    return Run(side, out)


def figure(run: Run, script: str, pattern: str) -> float:
    m = re.search(pattern, run.out[script])
    if not m:
        sys.exit(f"{run.side}: no match for {pattern!r} in:\n{run.out[script]}")
    return float(m.group(1))


def check_imports(code_root: Path, expect: Path) -> None:
    """Make sure each side really runs its own code."""
    env = {**os.environ, "PYTHONPATH": str(code_root / "operator")}
    got = subprocess.run(
        [PYTHON, "-c", "import apwa; print(apwa.__file__)"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(got).resolve().is_relative_to(expect.resolve()):
        sys.exit(f"expected apwa from {expect}, got {got}")


def report(pairs: list[tuple[Run, Run]]) -> None:
    print(f"\n{'figure':<34}{'base':>24}{'head':>24}   head/base: median (min..max)")
    for name, script, pattern in FIGURES:
        base = [figure(b, script, pattern) for b, _ in pairs]
        head = [figure(h, script, pattern) for _, h in pairs]
        ratios = [h / b for b, h in zip(base, head, strict=True) if b]
        shown = " ".join(f"{v:.2f}" for v in base), " ".join(f"{v:.2f}" for v in head)
        spread = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}..{max(ratios):.3f})" if ratios else "-"
        print(f"{name:<34}{shown[0]:>24}{shown[1]:>24}   {spread}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="1118578", help="commit to compare against (default: 1118578)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000, help="subtasks of the operator benchmark")
    ap.add_argument("--plan-n", type=int, default=100_000, help="subtasks of the plan/render benchmark")
    args = ap.parse_args()
    if not os.environ.get("KUBECONFIG"):
        sys.exit('set KUBECONFIG first: eval "$(APWA_CLUSTER_NAME=core bash hack/cluster.sh up | tail -n 1)"')
    with tempfile.TemporaryDirectory(prefix="apwa-base-") as tmp:
        base_root = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_root), args.base],
            check=True,
            capture_output=True,
        )
        try:
            check_imports(base_root, base_root)
            check_imports(REPO, REPO)
            pairs = []
            for i in range(args.repeats):
                print(f"repeat {i + 1}/{args.repeats}", flush=True)
                base = run_side(f"base {args.base}", base_root, args.n, args.plan_n)
                head = run_side("head", REPO, args.n, args.plan_n)
                pairs.append((base, head))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_root)], check=False)
    print(f"\noperator_bench.py --n {args.n}, plan_render.py --n {args.plan_n}, {args.repeats} interleaved pairs")
    report(pairs)


if __name__ == "__main__":
    main()
