"""End to end on this machine's real node: the operator in-cluster (Helm chart, locally built
image, its ServiceAccount), every example on real containers of the worker image, each result
equal to `apwa run --local` of the same file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_examples import (
    EXAMPLES,
    example_docs,
    example_namespace,
    extract_source_tree,
    local_result,
    wait_finished,
    wait_for,
    workload_name,
)
from real_node import NODE_NAME, OPERATOR_NS, RELEASE, RealNode

pytestmark = pytest.mark.e2e


@pytest.fixture
def example_ns(incluster_operator: RealNode) -> Iterator[str]:
    with example_namespace(incluster_operator.kubectl) as ns:
        yield ns


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_on_real_pods(
    incluster_operator: RealNode, example_ns: str, example: Path, tmp_path: Path
) -> None:
    node = incluster_operator
    node.kubectl("-n", example_ns, "apply", "-f", "-", stdin=example_docs(example, node.images["worker"], node.place))
    name = workload_name(example)
    workload = wait_finished(lambda: node.get("-n", example_ns, "parallelworkload", name), f"{example_ns}/{name}")
    status = workload["status"]
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["failed"] == 0 and status["counts"]["succeeded"] == status["counts"]["total"]
    pods = node.get("-n", example_ns, "pods")["items"]
    assert pods and {p["spec"]["nodeName"] for p in pods} == {NODE_NAME}, "every subtask ran on the real node"
    env = None
    if example.name == "wordcount.yaml":
        # The image counts its own /src: count the same tree here.
        env = {"WORDCOUNT_ROOT": str(extract_source_tree(node.archives["worker"], tmp_path))}
    assert status["result"] == local_result(example, env)


def test_operator_is_ready_and_serves_metrics(incluster_operator: RealNode) -> None:
    node = incluster_operator
    dep = node.get("-n", OPERATOR_NS, "deployment", RELEASE)
    assert dep["status"].get("readyReplicas") == 2  # the leader and a standby
    pods = node.get("-n", OPERATOR_NS, "pods", "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])  # readiness probe passes
        assert all(c["restartCount"] == 0 for c in pod["status"]["containerStatuses"])  # liveness never failed
    # One leader: the Lease names one of the two pods, and only that one says it leads.
    holder = node.get("-n", OPERATOR_NS, "lease", RELEASE)["spec"]["holderIdentity"]
    leading = {
        p["metadata"]["name"]: re.search(r"^apwa_leader (\S+)$", _pod_metrics(p), re.M).group(1)  # type: ignore[union-attr]
        for p in pods
    }
    assert sorted(leading.values()) == ["0.0", "1.0"], leading
    assert holder.startswith(f"apwa@{next(n for n, v in leading.items() if v == '1.0')}/")
    # /metrics through its Service: the ClusterIP, translated by kube-proxy's rules on this host.
    svc = node.get("-n", OPERATOR_NS, "service", f"{RELEASE}-metrics")
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}/metrics"
    metrics = wait_for(lambda: httpx.get(url, timeout=5).text, 60, f"{url} answers")
    assert "apwa_subtasks_created_total" in metrics


def _pod_metrics(pod: dict[str, Any]) -> str:
    """A replica's own /metrics, at its pod IP (the host routes to the real node's pods)."""
    url = f"http://{pod['status']['podIP']}:8080/metrics"
    return wait_for(lambda: httpx.get(url, timeout=5).text, 60, f"{url} answers")


def test_operator_logged_no_permission_errors(incluster_operator: RealNode) -> None:
    selector = "app.kubernetes.io/component=operator"
    logs = incluster_operator.kubectl("-n", OPERATOR_NS, "logs", "-l", selector, "--prefix", "--tail=-1")
    denied = [
        line for line in logs.splitlines() if re.search(r"(?<![\d,.:])403(?!\d)|[Ff]orbidden|Not enough perm", line)
    ]
    assert not denied, "\n".join(denied[:20])
