"""End to end on this machine's real node: the operator in-cluster (Helm chart, locally built
image, its ServiceAccount), every example on real containers of the worker image, each result
equal to `apwa run --local` of the same file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

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
    assert dep["status"].get("readyReplicas") == 1
    (pod,) = node.get("-n", OPERATOR_NS, "pods", "-l", "app.kubernetes.io/component=operator")["items"]
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])  # readiness probe passes
    assert all(c["restartCount"] == 0 for c in pod["status"]["containerStatuses"])  # liveness never failed
    # /metrics through its Service: the ClusterIP, translated by kube-proxy's rules on this host.
    svc = node.get("-n", OPERATOR_NS, "service", f"{RELEASE}-metrics")
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}/metrics"
    metrics = wait_for(lambda: httpx.get(url, timeout=5).text, 60, f"{url} answers")
    assert "apwa_subtasks_created_total" in metrics


def test_operator_logged_no_permission_errors(incluster_operator: RealNode) -> None:
    logs = incluster_operator.kubectl("-n", OPERATOR_NS, "logs", f"deployment/{RELEASE}")
    denied = [
        line for line in logs.splitlines() if re.search(r"(?<![\d,.:])403(?!\d)|[Ff]orbidden|Not enough perm", line)
    ]
    assert not denied, "\n".join(denied[:20])
