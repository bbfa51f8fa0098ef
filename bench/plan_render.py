"""Plan and render 100,000 subtasks: subtasks/s and peak memory.

Compared in the same run against a baseline that only builds the same number of plain dicts
(the cost floor of producing one object per subtask), so the printed ratio is what planning
and rendering add, independent of this machine's speed.

    .venv/bin/python bench/plan_render.py [--n 100000]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from apwa.api.models import ParallelWorkloadSpec
from apwa.planning import plan
from apwa.rendering import Owner, render_job

POD = {
    "spec": {
        "containers": [
            {
                "name": "agent",
                "image": "example.com/agent:1",
                "args": ["--file", "{{ item.path }}", "--shard", "{{ index }}/{{ count }}"],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            }
        ]
    }
}


def measure(fn: Callable[[], Any]) -> tuple[float, int]:
    """Seconds of a plain run, then peak traced memory of a second run (tracing slows it ~7x)."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    n = ap.parse_args().n
    spec = ParallelWorkloadSpec.model_validate(
        {"decomposition": {"range": {"end": n}}, "templates": {"default": {"podTemplate": POD}}}
    )
    items_spec = ParallelWorkloadSpec.model_validate(
        {"decomposition": {"configMapRef": {"name": "c", "key": "k"}}, "templates": {"default": {"podTemplate": POD}}}
    )
    data = [{"path": f"src/module_{i}.py"} for i in range(n)]
    owner = Owner("bench", "default", "00000000-0000-0000-0000-000000000000")

    def baseline() -> None:
        [{"index": i, "item": i, "name": f"bench-{i}"} for i in range(n)]

    def plan_only() -> None:
        plan(spec)

    def plan_items() -> None:
        plan(items_spec, data=data)

    def plan_and_render() -> None:
        subtasks = plan(items_spec, data=data)
        for s in subtasks:
            render_job(owner, items_spec, s, n)  # the operator renders one Job at a time

    base_t, base_m = measure(baseline)
    print(f"n = {n}")
    print(f"{'stage':<22}{'seconds':>10}{'subtasks/s':>14}{'peak MiB':>10}{'x baseline':>12}")
    for name, fn in [
        ("baseline (dicts)", baseline),
        ("plan range", plan_only),
        ("plan items", plan_items),
        ("plan + render Jobs", plan_and_render),
    ]:
        t, m = (base_t, base_m) if fn is baseline else measure(fn)
        print(f"{name:<22}{t:>10.3f}{n / t:>14,.0f}{m / 2**20:>10.1f}{t / base_t:>12.1f}")


if __name__ == "__main__":
    main()
