"""A rolling update of the in-cluster operator (two replicas, leader election) in the middle of a
run on real pods changes nothing in the outcome: every subtask once, every result, Succeeded."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator

import pytest
import yaml
from e2e_examples import example_namespace, wait_finished, wait_for
from real_node import OPERATOR_NS, RELEASE, RealNode

# Slow (CI's budget): the chart's upgrade and a run on real pods take 3 minutes; failover itself is
# in `make test` (tests/integration/test_leader_election.py, tests/e2e/test_examples_real.py).
pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N = 24
WORKER = "from apwa import worker; import time; time.sleep(1); worker.emit(worker.index() * 10)"


@pytest.fixture
def ha_ns(incluster_operator: RealNode) -> Iterator[str]:
    with example_namespace(incluster_operator.kubectl, "ha-") as ns:
        yield ns


def job_uids(node: RealNode, ns: str, seen: dict[str, set[str]], stop: threading.Event) -> None:
    """Every Job uid by name, polled (kubectl) until stopped: a Job created twice shows two."""
    while not stop.is_set():
        for job in node.get("-n", ns, "jobs")["items"]:
            seen[job["metadata"]["name"]].add(job["metadata"]["uid"])
        stop.wait(0.5)


def test_a_rolling_update_mid_run_changes_nothing(incluster_operator: RealNode, ha_ns: str) -> None:
    node = incluster_operator
    container = {
        "name": "w",
        "image": node.images["worker"],
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", WORKER],
    }
    doc = {
        "apiVersion": "apwa.dev/v1alpha1",
        "kind": "ParallelWorkload",
        "metadata": {"name": "rolling"},
        "spec": {
            "decomposition": {"range": {"end": N}},
            "parallelism": 3,
            "templates": {"default": {"podTemplate": {"spec": node.place({"containers": [container]})}}},
        },
    }
    seen: dict[str, set[str]] = defaultdict(set)
    stop = threading.Event()
    poller = threading.Thread(target=job_uids, args=(node, ha_ns, seen, stop), daemon=True)
    poller.start()
    try:
        node.kubectl("-n", ha_ns, "apply", "-f", "-", stdin=yaml.safe_dump(doc))
        get = lambda: node.get("-n", ha_ns, "parallelworkload", "rolling")  # noqa: E731
        wait_for(lambda: (get().get("status") or {}).get("counts", {}).get("succeeded", 0) >= 3, 300, "3 done")
        node.kubectl("-n", OPERATOR_NS, "rollout", "restart", f"deployment/{RELEASE}")
        node.kubectl("-n", OPERATOR_NS, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s", timeout=320)
        status = wait_finished(get, f"{ha_ns}/rolling")["status"]
    finally:
        stop.set()
        poller.join(timeout=10)
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["succeeded"] == N
    assert len(seen) == N and all(len(u) == 1 for u in seen.values()), "a Job was created twice"
    assert status["result"] == [{"index": i, "result": i * 10} for i in range(N)]
