"""The operator under fuzzed workloads (issue 16, part 5d): a batch of generated ParallelWorkloads
(tests/fuzz_strategies.py; valid and invalid, each container made a kwok pod so valid ones finish),
the models-vs-CRD divergences that only the operator can catch, workloads whose pods report hostile
termination messages, and one normal workload, all at once in one namespace of the running operator.

Asserted: the operator process stays alive and logs no failed step for this namespace (a traceback
loop), its CPU time over the period stays under half a core on average (no hot loop; the figure is
printed), every workload the models refuse gets Stalled=True with a message naming a field, the
hostile results end their workloads (no status write refused forever), and the normal workload
still completes.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import fuzz_strategies as fz
import pytest
from apwa.core import Stalled
from apwa.core.decide import read_spec
from apwa.planning import PlanningError, plan, plan_count
from helpers import wait_for
from hypothesis import HealthCheck, Phase, given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_proc import OperatorProcess
from workloads import Workloads, pod_template, workload

BATCH = 40
MAX_SUBTASKS = 6  # per generated workload: the batch stays small on a shared machine
CPU_BOUND = 0.5  # of one core, averaged over the period
KWOK_IMAGE = pod_template()["spec"]["containers"][0]["image"]
_FIELD = re.compile(r"\bspec(\.[A-Za-z0-9_\-\[\]]+)+")
MINIMAL = {"default": {"podTemplate": pod_template()}}
# What the models refuse and the CRD can't (tests/integration/test_fuzz_crd.py, DOCUMENTED), plus an
# item naming a missing template: the operator is the only one left to say so.
DIVERGENT = {
    "matrix-empty-axis": {"decomposition": {"matrix": {"a": [1], "b": []}}, "templates": MINIMAL},
    "ghost-container": {
        "decomposition": {"shards": {"count": 1}},
        "templates": {
            "default": {
                "podTemplate": pod_template(),
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "FailJob",
                            "onExitCodes": {"containerName": "ghost", "operator": "In", "values": [3]},
                        }
                    ]
                },
            }
        },
    },
    "template-not-dns": {"decomposition": {"items": [1]}, "templates": {**MINIMAL, "Big_One": MINIMAL["default"]}},
    "item-names-ghost": {"decomposition": {"items": [1, {"template": "ghost"}]}, "templates": MINIMAL},
}
# Results the kubelet could deliver (tests/unit/test_fuzz_results.py goes through many more).
HOSTILE_RESULTS = {
    "nan": "NaN",
    "inf": "1e999",
    "huge": "9" * 400,
    "deep": "[" * 300 + "]" * 300,
    "cut": '{"apwa":1,"len":40,"value":"abc',
    "version": '{"apwa":0,"value":1}',
}


def kwok_pods(spec: dict[str, Any]) -> dict[str, Any]:
    """The same spec with every container's image the kwok placeholder (kwok finishes its pods)."""
    templates = spec.get("templates")
    for template in templates.values() if isinstance(templates, dict) else ():
        pod = template.get("podTemplate") if isinstance(template, dict) else None
        pod_spec = pod.get("spec") if isinstance(pod, dict) else None
        containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
        for c in containers if isinstance(containers, list) else ():
            if isinstance(c, dict):
                c["image"] = KWOK_IMAGE
    return spec


def small(spec: dict[str, Any]) -> bool:
    try:
        parsed = read_spec(spec)
    except Stalled:
        return True
    return plan_count(parsed) <= MAX_SUBTASKS


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def create(w: Workloads, name: str, spec: dict[str, Any]) -> bool:
    """True when the API server took it (it refuses what the CRD refuses: not the operator's)."""
    try:
        w.create(
            {"apiVersion": "apwa.dev/v1alpha1", "kind": "ParallelWorkload", "metadata": {"name": name}, "spec": spec}
        )
    except ApiException as e:
        assert e.status in (400, 422), e
        return False
    return True


def stalled_naming_a_field(w: Workloads, name: str) -> str | None:
    c = w.condition(name, "Stalled")
    if not c or c["status"] != "True":
        return None
    return c["message"] if _FIELD.search(c["message"]) or fz.names_a_field(c["message"]) else None


def finished(w: Workloads, name: str) -> bool:
    return (w.get(name).get("status") or {}).get("phase") in ("Succeeded", "Failed")


@pytest.mark.usefixtures("crd")
def test_the_operator_survives_a_batch_of_fuzzed_workloads(
    api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    w = Workloads(api, namespace)
    assert operator.proc is not None
    pid, log_start = operator.proc.pid, operator.log_path.stat().st_size
    t0, cpu0 = time.monotonic(), cpu_seconds(pid)
    created: dict[str, dict[str, Any]] = {}

    @given(spec=fz.specs(kube=True).map(kwok_pods).filter(small))
    @settings(
        max_examples=BATCH * 4,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # a failure here is the test's: no minutes of shrinking
    )
    def apply(spec: dict[str, Any]) -> None:
        # Until BATCH are created: many mutated specs are refused by the API server already.
        if len(created) < BATCH and create(w, f"fz-{len(created)}", spec):
            created[f"fz-{len(created)}"] = spec

    apply()
    for name, spec in DIVERGENT.items():
        assert create(w, name, spec), f"{name}: the API server now refuses it; move it out of DIVERGENT"
        created[name] = spec
    for name, message in HOSTILE_RESULTS.items():
        w.create(workload(f"result-{name}", {"range": {"end": 2}}, env={"KWOK_MESSAGE": message}))
    w.create(workload("normal", {"range": {"end": 5}}, env={"KWOK_MESSAGE": "{{ item }}"}))

    refused = [n for n, s in created.items() if _refused(s)]
    for name in refused:
        wait_for(
            lambda n=name: stalled_naming_a_field(w, n), 120, f"{name}: Stalled naming a field ({w.describe(name)})"
        )
    for name in HOSTILE_RESULTS:
        wait_for(
            lambda n=name: finished(w, f"result-{n}"), 120, f"result-{name} finished ({w.describe('result-' + name)})"
        )
    done = w.wait_condition("normal", "Complete")
    assert done["status"]["counts"]["succeeded"] == 5

    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    log = operator.log_path.read_bytes()[log_start:].decode(errors="replace")
    failed_steps = [line for line in log.splitlines() if f"workload {namespace}/" in line and "step failed" in line]
    hostile = {
        n: (w.get(f"result-{n}")["status"].get("failedSubtasks") or [{}])[0].get("reason") for n in HOSTILE_RESULTS
    }
    print(
        f"\nfuzz operator: {len(created)} workloads taken by the API server ({len(refused)} refused by the models), "
        f"CPU {cpu:.1f}s over {elapsed:.1f}s = {cpu / elapsed:.0%} of one core; hostile results: {hostile}"
    )
    assert operator.proc.poll() is None, "the operator exited"
    assert not failed_steps, f"steps failed for this namespace: {failed_steps[:3]}"
    assert cpu / elapsed < CPU_BOUND, f"the operator used {cpu / elapsed:.0%} of a core"
    assert hostile["cut"] == "ResultTruncated"
    assert all(hostile[n] == "ResultInvalid" for n in ("inf", "huge", "deep", "version")), hostile


def _refused(spec: dict[str, Any]) -> bool:
    """The models refuse it, or the planner does (without data: items, range, shards, matrix)."""
    try:
        parsed = read_spec(spec)
        if parsed.decomposition.strategy in ("items", "range", "shards", "matrix"):
            plan(parsed)
    except (Stalled, PlanningError):
        return True
    return False
