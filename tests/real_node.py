"""The real node of hack/realnode.sh, for the tiers that need real containers (tests/e2e,
tests/isolation): bring it up, know its images, install the operator in-cluster with Helm.

Fixtures built on this live in tests/conftest.py (``real_node``, ``incluster_operator``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODE_NAME = "apwa-real-0"
NODE_LABEL = {"apwa.dev/real-node": "true"}
NODE_TOLERATION = {"key": "apwa.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
RELEASE, OPERATOR_NS = "apwa", "apwa-system"
# The in-cluster operator of the test session handles only namespaces with this prefix, so the
# integration tier's own operator and this one never share a workload (tests/e2e/e2e_examples.py
# names its namespaces so).
E2E_PREFIX = "apwa-e2e-"
STORE_SECRET = "apwa-e2e-s3"
UP_TIMEOUT_S = float(os.environ.get("APWA_REAL_NODE_UP_TIMEOUT", "3000"))


def run(cmd: list[str], *, stdin: str | None = None, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a command from the repository root, failing with its output."""
    proc = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{tail}")
    return proc.stdout


@dataclass
class RealNode:
    kubeconfig: str
    bin_dir: str
    images: dict[str, str] = field(default_factory=dict)  # name (worker, operator, ...) -> image ref
    archives: dict[str, Path] = field(default_factory=dict)  # name -> the OCI archive of that ref

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        return run([f"{self.bin_dir}/kubectl", "--kubeconfig", self.kubeconfig, *args], stdin=stdin, timeout=timeout)

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    @staticmethod
    def place(pod_spec: dict[str, Any]) -> dict[str, Any]:
        """Put a pod on the real node: its label as nodeSelector, its taint tolerated."""
        pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), **NODE_LABEL}
        tolerations = pod_spec.setdefault("tolerations", [])
        if NODE_TOLERATION not in tolerations:
            tolerations.append(dict(NODE_TOLERATION))
        return pod_spec


def _images() -> list[list[str]]:
    """`hack/images.sh refs`: lines `<name> <ref> <archive>`."""
    out = run(["bash", str(ROOT / "hack" / "images.sh"), "refs"], timeout=300)
    return [words for words in (line.split() for line in out.splitlines()) if len(words) >= 3]


def image_refs() -> dict[str, str]:
    return {name: ref for name, ref, *_ in _images()}


def image_archives() -> dict[str, Path]:
    return {name: Path(rest[0]) for name, _, *rest in _images()}


def attach(kubeconfig: str) -> RealNode:
    """The real node another checkout brought up, used as it is: nothing is started, rebuilt or
    loaded (its cluster may run other people's tests), so only images already on the node work."""
    export = run(["bash", str(ROOT / "hack" / "cluster.sh"), "env"], env={"APWA_CLUSTER_NAME": "apwa"})
    words = dict(w.split("=", 1) for w in shlex.split(export.strip().splitlines()[-1])[1:])
    node = RealNode(kubeconfig=kubeconfig, bin_dir=words["PATH"].removesuffix(":$PATH"))
    node.images = image_refs()
    return node


def bring_up() -> RealNode:
    """`APWA_REAL_NODE=1 hack/cluster.sh up`: the control plane, the real node and its images (all
    cached and idempotent). Raises with the script's output when it fails: never a skip.
    APWA_REAL_NODE_ATTACH=<kubeconfig> uses a running one as it is instead (`attach`)."""
    if os.environ.get("APWA_REAL_NODE_ATTACH"):
        return attach(os.environ["APWA_REAL_NODE_ATTACH"])
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "cluster.sh"), "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        env={**os.environ, "APWA_REAL_NODE": "1"},
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-60:])
        raise RuntimeError(f"APWA_REAL_NODE=1 hack/cluster.sh up failed (exit {proc.returncode}):\n{tail}")
    words = dict(w.split("=", 1) for w in shlex.split(lines[-1])[1:])
    node = RealNode(kubeconfig=words["KUBECONFIG"], bin_dir=words["PATH"].removesuffix(":$PATH"))
    node.images = image_refs()
    node.archives = image_archives()
    return node


def helm_install(node: RealNode, *, namespaces: list[str] | None) -> None:
    """The chart, with the locally built operator image, on the real node. `namespaces`: the
    chart's namespacePatterns, or None for every namespace."""
    repo, _, tag = node.images["operator"].rpartition(":")
    placement = [
        "--set-json",
        f"nodeSelector={json.dumps(NODE_LABEL)}",
        "--set-json",
        f"tolerations={json.dumps([NODE_TOLERATION])}",
    ]
    cmd = [f"{node.bin_dir}/helm", "upgrade", "--install", RELEASE, str(ROOT / "charts" / "apwa")]
    cmd += ["--namespace", OPERATOR_NS, "--create-namespace", "--kubeconfig", node.kubeconfig]
    cmd += ["--wait", "--timeout", "5m", "--set", f"image.repository={repo}", "--set", f"image.tag={tag}"]
    cmd += ["--set", "image.pullPolicy=Never", "--set-json", f"namespacePatterns={json.dumps(namespaces or [])}"]
    # The one Secret the e2e tests' object stores use (tests/e2e/test_store_real.py).
    cmd += ["--set-json", f"rbac.secretNames={json.dumps([STORE_SECRET])}"]
    run(cmd + placement, timeout=600)


if __name__ == "__main__":  # python tests/real_node.py: bring the node up, print the export line
    n = bring_up()
    print(json.dumps(n.images, indent=2), file=sys.stderr)
    print(f"export KUBECONFIG={shlex.quote(n.kubeconfig)} PATH={shlex.quote(n.bin_dir)}:$PATH")
