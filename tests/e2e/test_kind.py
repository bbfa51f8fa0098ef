"""End to end on kind, with real pods: both images built, the chart installed, every example run.

Needs docker (with a daemon that answers), kind and kubectl on PATH; helm from PATH or from
hack/testenv-build.sh. Without them every test here is skipped, and the reason is printed
(pytest -ra / -rs). The same flow is `make demo` (this file run as a script), for a person.

Environment:
  APWA_KIND_CLUSTER   kind cluster name (default apwa-e2e; `make demo` uses apwa)
  APWA_E2E_KEEP=1     keep the kind cluster this run created (it is deleted otherwise)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_examples import EXAMPLES, ROOT, example_docs, example_namespace, local_result, wait_finished, workload_name

pytestmark = pytest.mark.e2e

KIND_CONFIG = ROOT / "kind-config.yaml"


RELEASE, OPERATOR_NS = "apwa", "apwa-system"


def run(cmd: list[str], *, stdin: str | None = None, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    """Run a command from the repository root (the images' build context), echoing it; fail with
    its output when it fails."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def helm_binary() -> str | None:
    found = shutil.which("helm")
    if found:
        return found
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "testenv-build.sh"), "helm"], capture_output=True, text=True, timeout=1800
    )
    return str(Path(proc.stdout.strip().splitlines()[-1]) / "helm") if proc.returncode == 0 else None


def missing() -> str | None:
    """Why this machine cannot run the kind flow, or None when it can."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (the kind e2e flow needs docker, kind and kubectl)"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "the docker daemon did not answer `docker info` within 30 s"
    if info.returncode != 0 or not info.stdout.strip():
        detail = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no docker daemon answers `docker info`: {detail}"
    if helm_binary() is None:
        return "helm is neither on PATH nor buildable with hack/testenv-build.sh helm (needs Go)"
    return None


@dataclass
class Kind:
    name: str
    kubeconfig: Path
    helm: str
    operator_image: str
    worker_image: str
    created: bool

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], stdin=stdin)

    def workload(self, ns: str, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("-n", ns, "get", "parallelworkload", name, "-o", "json"))


def build_image(dockerfile: str, name: str) -> str:
    """docker build; tagged by image id so that a changed image is a changed Deployment."""
    run(["docker", "build", "-f", dockerfile, "-t", f"{name}:dev", "."], timeout=1800, env={"DOCKER_BUILDKIT": "1"})
    image_id = run(["docker", "image", "inspect", "--format", "{{.Id}}", f"{name}:dev"]).strip()
    tag = f"{name}:{image_id.removeprefix('sha256:')[:12]}"
    run(["docker", "tag", f"{name}:dev", tag])
    return tag


def bring_up(name: str) -> Kind:
    """kind cluster (reused if it exists), both images built and loaded, the chart installed."""
    cache = Path(os.environ.get("APWA_CACHE_DIR") or Path.home() / ".cache" / "apwa")
    cache.mkdir(parents=True, exist_ok=True)
    kubeconfig = cache / f"kind-{name}.kubeconfig"
    helm = helm_binary()
    assert helm is not None
    created = name not in run(["kind", "get", "clusters"]).split()
    if created:
        run(["kind", "create", "cluster", "--name", name, "--config", str(KIND_CONFIG), "--wait", "180s"])
    kubeconfig.write_text(run(["kind", "get", "kubeconfig", "--name", name]))
    operator_image = build_image("images/operator/Dockerfile", "apwa-operator")
    worker_image = build_image("images/worker/Dockerfile", "apwa-worker")
    run(["kind", "load", "docker-image", "--name", name, operator_image, worker_image], timeout=1800)
    repo, tag = operator_image.split(":")
    install = [helm, "upgrade", "--install", RELEASE, str(ROOT / "charts" / "apwa"), "--namespace", OPERATOR_NS]
    install += ["--create-namespace", "--kubeconfig", str(kubeconfig), "--wait", "--timeout", "5m"]
    # Never pull: the images exist only inside the kind nodes (kind load).
    install += ["--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never"]
    run(install, timeout=600)
    return Kind(name, kubeconfig, helm, operator_image, worker_image, created)


def apply_example(kind: Kind, ns: str, example: Path) -> str:
    kind.kubectl("-n", ns, "apply", "-f", "-", stdin=example_docs(example, kind.worker_image))
    return workload_name(example)


def wait_done(kind: Kind, ns: str, name: str) -> dict[str, Any]:
    return wait_finished(lambda: kind.workload(ns, name), f"{ns}/{name}")


# ---- pytest ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kind() -> Iterator[Kind]:
    reason = missing()
    if reason:
        pytest.skip(f"e2e on kind skipped: {reason}")
    k = bring_up(os.environ.get("APWA_KIND_CLUSTER", "apwa-e2e"))
    try:
        yield k
    finally:
        if k.created and os.environ.get("APWA_E2E_KEEP") != "1":
            run(["kind", "delete", "cluster", "--name", k.name])


@pytest.fixture
def example_ns(kind: Kind) -> Iterator[str]:
    with example_namespace(kind.kubectl) as ns:
        yield ns


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_on_kind(kind: Kind, example_ns: str, example: Path) -> None:
    name = apply_example(kind, example_ns, example)
    status = wait_done(kind, example_ns, name)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["failed"] == 0 and status["counts"]["succeeded"] == status["counts"]["total"]
    if example.name == "wordcount.yaml":
        # The image's /src is the repository without .git and caches: not the same file list as
        # the local run's `git ls-files`, so the shape and plausibility are checked instead.
        result = status["result"]
        assert set(result) == {"files", "lines", "words", "bytes"}, result
        assert result["files"] > 50 and result["lines"] > result["files"], result
    else:
        assert status["result"] == local_result(example)


def test_operator_is_ready_and_logged_no_permission_errors(kind: Kind) -> None:
    dep = json.loads(kind.kubectl("-n", OPERATOR_NS, "get", "deployment", RELEASE, "-o", "json"))
    assert dep["status"].get("readyReplicas") == 1
    logs = kind.kubectl("-n", OPERATOR_NS, "logs", f"deployment/{RELEASE}")
    # A 403 status (not a timestamp's milliseconds), the API's "forbidden", or kopf's fallback warning.
    denied = [
        line for line in logs.splitlines() if re.search(r"(?<![\d,.:])403(?!\d)|[Ff]orbidden|Not enough perm", line)
    ]
    assert not denied, "\n".join(denied[:20])


# ---- make demo -----------------------------------------------------------------------------------


def demo() -> int:
    reason = missing()
    if reason:
        print(f"make demo needs Docker (a running daemon), kind and kubectl: {reason}", file=sys.stderr)
        return 1
    kind = bring_up(os.environ.get("APWA_KIND_CLUSTER", "apwa"))
    example = ROOT / "examples" / "wordcount.yaml"
    name = apply_example(kind, "default", example)
    print(f"waiting for ParallelWorkload default/{name} (kubectl get pwl -w shows progress)...", flush=True)
    status = wait_done(kind, "default", name)["status"]
    print(yaml.safe_dump({"phase": status["phase"], "message": status["message"], "result": status.get("result")}))
    print(f"The cluster keeps running. Next:\n  export KUBECONFIG={kind.kubeconfig}\n  kubectl get pwl")
    print(f"  kind delete cluster --name {kind.name}    # when done")
    return 0 if status["phase"] == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(demo())
