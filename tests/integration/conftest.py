"""Fixtures for the integration tier: a real control plane started by hack/cluster.sh (kwokctl).

* ``cluster`` (session): runs ``hack/cluster.sh up`` (idempotent; reuses a running cluster), points
  KUBECONFIG and PATH of this process (and so of subprocesses such as kubectl) at it. With
  APWA_CLUSTER_STOP=1 the cluster is deleted at the end of the session.
* ``api`` (session): a kubernetes.client.ApiClient for that cluster.
* ``namespace`` (per test): a fresh namespace with its default ServiceAccount, deleted afterwards.

If the cluster cannot be started the tests error with the script's output; they are never skipped.

``helpers`` is imported as a top-level module: this directory has no __init__.py, and pytest's
default "prepend" import mode puts it on sys.path.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Cluster, temporary_namespace
from kubernetes import client, config
from operator_proc import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "hack" / "cluster.sh"
HERE = Path(__file__).resolve().parent
UP_TIMEOUT_S = float(os.environ.get("APWA_CLUSTER_UP_TIMEOUT", "1800"))
# Every namespace of this pytest session starts with this prefix, and the session's operator
# watches only those: concurrent sessions (or a hand-run operator) never handle each other's work.
# APWA_TEST_NS_PREFIX: a person sharing a cluster tells their namespaces apart (e.g. "fuzz-").
SESSION_PREFIX = f"{os.environ.get('APWA_TEST_NS_PREFIX', 'it')}{uuid.uuid4().hex[:4]}-"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def parse_export_line(line: str) -> Cluster:
    """Parse ``export KUBECONFIG=<file> PATH=<bin dir>:$PATH`` as printed by hack/cluster.sh."""
    words = shlex.split(line)
    if not words or words[0] != "export":
        raise ValueError(f"not an export line: {line!r}")
    values = dict(w.split("=", 1) for w in words[1:])
    kubeconfig = values.get("KUBECONFIG", "")
    path = values.get("PATH", "")
    if not kubeconfig or not path.endswith(":$PATH"):
        raise ValueError(f"unexpected export line: {line!r}")
    return Cluster(kubeconfig=kubeconfig, bin_dir=path.removesuffix(":$PATH"))


def _run_cluster_sh(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    try:
        proc = _run_cluster_sh("up", timeout=UP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hack/cluster.sh up did not finish in {UP_TIMEOUT_S:g}s: {exc}", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        stderr_tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        pytest.fail(
            f"hack/cluster.sh up failed (exit {proc.returncode}); last stderr lines:\n{stderr_tail}",
            pytrace=False,
        )
    info = parse_export_line(lines[-1])
    os.environ["KUBECONFIG"] = info.kubeconfig
    os.environ["PATH"] = info.bin_dir + os.pathsep + os.environ.get("PATH", "")
    yield info
    if os.environ.get("APWA_CLUSTER_STOP") == "1":
        down = _run_cluster_sh("down", timeout=300)
        if down.returncode != 0:
            raise RuntimeError(f"hack/cluster.sh down failed (exit {down.returncode}):\n{down.stderr}")


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=cluster.kubeconfig)
    try:
        yield api_client
    finally:
        api_client.close()


def _namespace_name(node_name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", node_name.lower()).strip("-")[:40].rstrip("-")
    return f"{SESSION_PREFIX}{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    with temporary_namespace(api, _namespace_name(request.node.name), {"apwa.dev/test": "integration"}) as name:
        yield name


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    subprocess.run(
        ["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["kubectl", "wait", "--for=condition=Established", "crd/parallelworkloads.apwa.dev", "--timeout=60s"],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def operator(crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator for the session; a test may kill and restart it (the restart test does)."""
    op = OperatorProcess(tmp_path_factory.mktemp("operator"), args=["--namespace", f"{SESSION_PREFIX}*"])
    op.start()
    try:
        yield op
    finally:
        op.stop()
