"""Subtask identity through the operator: real ParallelWorkloads, the NetworkPolicy the operator made.

The rendered lab (test_isolation_network.py) proves what each policy blocks; this module proves
that the operator, running as `apwa operator` against the cluster, creates that policy for its
subtasks with labels that select them. ``guarded``: the operator's policies as it created them;
``control``: the same probes after deleting them (the operator creates a workload's policy once,
when it starts the workload, so it stays deleted until the guarded case restores the copy).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from isolation_lab import BANNER, BLOCKED, OPEN, POD_READY_S, Lab, Workload, apply, kubectl
from operator_proc import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = {"op-a": 2, "op-b": 1}


def parallel_workload(lab: Lab, name: str, count: int) -> dict[str, Any]:
    return {
        "apiVersion": "apwa.dev/v1alpha1",
        "kind": "ParallelWorkload",
        "metadata": {"name": name, "namespace": lab.namespace},
        "spec": {
            "decomposition": {"range": {"end": count}},
            "parallelism": count,
            "templates": {
                "default": {"podTemplate": {"spec": lab.placement.pod_spec("probe")}, "activeDeadlineSeconds": 3600}
            },
        },
    }


def operator_policy(namespace: str, name: str) -> dict[str, Any] | None:
    out = kubectl("get", "networkpolicy", "-n", namespace, f"{name}-isolation", "-o", "json", "--ignore-not-found")
    return json.loads(out) if out.strip() else None


@pytest.fixture(scope="module")
def operated(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """The operator runs op-a and op-b; returns each workload's NetworkPolicy as the operator made it."""
    if os.environ.get("APWA_ISOLATION_EXISTING") == "1" and os.environ.get("APWA_ISOLATION_LOCAL_OPERATOR") != "1":
        pytest.skip(
            "on an existing cluster this applies crds/ and runs `apwa operator` locally: opt in with "
            "APWA_ISOLATION_LOCAL_OPERATOR=1 (not beside an operator already installed there)"
        )
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/parallelworkloads.apwa.dev", "--timeout=60s")
    op = OperatorProcess(tmp_path_factory.mktemp("operator"), args=["--namespace", lab.namespace])
    op.start()
    try:
        policies = {}
        for name, count in WORKLOADS.items():
            apply(parallel_workload(lab, name, count))
        for name, count in WORKLOADS.items():
            policies[name] = wait_for(
                lambda name=name: operator_policy(lab.namespace, name), 60, f"the operator's policy of {name}"
            )
            w = Workload(name, lab.namespace, None, policies[name])  # type: ignore[arg-type]
            for index in range(count):
                w.pods.append(
                    wait_for(
                        lambda name=name, index=index: lab.running_pod(f"{name}-{index}"),
                        POD_READY_S,
                        f"the operator's subtask {name}-{index} to run (operator log: {op.log_path})",
                    )
                )
                lab.ips[w.pods[-1]] = lab.pod_ip(lab.namespace, w.pods[-1]) or ""
            lab.operated[name] = w
        yield policies
        for name in WORKLOADS:
            kubectl("delete", "parallelworkload", "-n", lab.namespace, name, "--wait=true", timeout=180)
    finally:
        op.stop()


def restore(lab: Lab, policy: dict[str, Any]) -> None:
    meta = policy["metadata"]
    clean = {k: meta[k] for k in ("name", "namespace", "labels", "ownerReferences") if k in meta}
    apply({"apiVersion": policy["apiVersion"], "kind": policy["kind"], "metadata": clean, "spec": policy["spec"]})


ROWS = [
    ("ISO-NET-01", "operator-subtask-to-same-workload", "op-a/0", "op-a/1"),
    ("ISO-NET-02", "operator-subtask-to-other-workload", "op-a/0", "op-b/0"),
    ("ISO-NET-08", "operator-ingress-from-other-workload", "op-b/0", "op-a/1"),
]


@pytest.mark.parametrize("case", ["guarded", "control"])
@pytest.mark.parametrize(
    ("iso", "source", "target"),
    [pytest.param(i, s, t, marks=pytest.mark.isolation(i), id=f"{i}-{n}") for i, n, s, t in ROWS],
)
def test_operator_made_policy(
    lab: Lab, operated: dict[str, dict[str, Any]], iso: str, source: str, target: str, case: str
) -> None:
    for name, policy in operated.items():
        if case == "guarded" and operator_policy(lab.namespace, name) is None:
            restore(lab, policy)
        if case == "control":
            kubectl("delete", "networkpolicy", "-n", lab.namespace, f"{name}-isolation", "--ignore-not-found")
    host, port = lab.address(f"{target}:8080")
    args = ("tcp", host, str(port))
    wanted = BLOCKED if case == "guarded" else OPEN
    result = lab.expect(source, args, wanted, f"{iso} through the operator ({case})")
    print(f"{iso} {case} (operator): {source} {' '.join(args)} -> {result}")
    if case == "control":
        assert result.get("banner") == BANNER, result
