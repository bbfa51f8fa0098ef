"""`apwa logs NAME --index I` on real containers: the log of that subtask's pod (stdout and stderr
of its main container), read through the API server from the real node's kubelet.

The operator runs on the host (as in the integration tier) and handles only this test's namespace,
so the test needs nothing of the in-cluster operator; the pods run the worker image on the real node.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_examples import ROOT, wait_finished  # also puts tests/integration on sys.path
from operator_proc import OperatorProcess
from real_node import RealNode

pytestmark = pytest.mark.e2e
APWA = str(Path(sys.executable).parent / "apwa")
WORKER = r"""
import os, sys
from apwa import worker
print(f"hello from subtask {os.environ['APWA_INDEX']} of {os.environ['APWA_COUNT']}", flush=True)
print(f"a warning on stderr from {worker.item()}", file=sys.stderr, flush=True)
worker.emit(worker.item())
"""


def worker_image(node: RealNode) -> str:
    """This checkout's worker image, or (attached to a node another checkout built) the worker
    image that node has."""
    on_node = [n for i in node.get("node", "apwa-real-0")["status"].get("images", []) for n in i.get("names", [])]
    if node.images.get("worker") in on_node:
        return node.images["worker"]
    others = sorted(n for n in on_node if "/apwa-worker:" in n)
    if not others:
        pytest.skip(
            f"no apwa worker image on the real node (have: {on_node}); bring it up with make cluster REAL_NODE=1"
        )
    return others[0]


@pytest.fixture
def logs_ns(real_node: RealNode, tmp_path: Path) -> Iterator[str]:
    ns = f"apwa-logs-{uuid.uuid4().hex[:6]}"  # not the in-cluster operator's apwa-e2e- namespaces
    real_node.kubectl("create", "namespace", ns)
    try:
        real_node.kubectl("get", "crd", "parallelworkloads.apwa.dev")
    except RuntimeError:
        real_node.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    op = OperatorProcess(tmp_path / "operator", extra_env={"PYTHONPATH": str(ROOT / "operator")}, args=["-n", ns])
    op.start()
    try:
        yield ns
    finally:
        op.stop()
        real_node.kubectl("delete", "namespace", ns, "--wait=false")


def workload(image: str) -> dict[str, Any]:
    container = {"name": "main", "image": image, "imagePullPolicy": "Never", "command": ["python3", "-c", WORKER]}
    pod = RealNode.place({"containers": [container]})
    return {
        "apiVersion": "apwa.dev/v1alpha1",
        "kind": "ParallelWorkload",
        "metadata": {"name": "talk"},
        "spec": {
            "decomposition": {"items": ["alpha", "beta"]},
            "templates": {"default": {"podTemplate": {"spec": pod}}},
        },
    }


def apwa(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    return subprocess.run([APWA, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_logs_show_the_chosen_subtasks_pod(real_node: RealNode, logs_ns: str) -> None:
    real_node.kubectl("-n", logs_ns, "apply", "-f", "-", stdin=yaml.safe_dump(workload(worker_image(real_node))))
    done = wait_finished(lambda: real_node.get("-n", logs_ns, "pwl", "talk"), "talk", timeout=300)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    one = apwa("logs", "talk", "--index", "1", "-n", logs_ns)
    assert one.returncode == 0, one.stderr
    assert "hello from subtask 1 of 2" in one.stdout and "a warning on stderr from beta" in one.stdout
    assert "subtask 0" not in one.stdout and "# pod talk-1-" in one.stderr
    zero = apwa("logs", "talk", "--index", "0", "-n", logs_ns, "--tail", "1")
    # The control: another pod's logs, one line of them. Which line is last is not fixed: the
    # runtime reads stdout and stderr through two pipes, so lines written a moment apart can swap.
    assert zero.stdout.strip() in {"hello from subtask 0 of 2", "a warning on stderr from alpha"}, zero.stdout
    for args, says in ((["--index", "5"], "subtask 5"), (["--index", "1", "--attempt", "1"], "attempt 1 of subtask 1")):
        missing = apwa("logs", "talk", "-n", logs_ns, *args)
        assert missing.returncode == 1 and f"{says} of 'talk' has no pod" in missing.stderr
