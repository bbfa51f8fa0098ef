"""Shared by every test directory. Its presence puts tests/ on sys.path (pytest's prepend import
mode adds a rootless conftest's directory), so test modules share helpers such as scripted_server
and real_node.

Session fixtures for the real-pod tiers (tests/e2e, tests/isolation) live here so both share one
real node and one in-cluster operator:
* ``real_node``: `APWA_REAL_NODE=1 hack/cluster.sh up` (control plane + real node + images); points
  KUBECONFIG and PATH at it. With APWA_CLUSTER_STOP=1 the cluster is deleted at the end.
* ``incluster_operator``: the Helm chart installed with the locally built operator image, running
  on the real node, handling the namespaces that start with ``real_node.E2E_PREFIX``.

And for any tier:
* ``s3_server``: the test environment's S3 server (hack/s3.sh; also started by hack/cluster.sh up),
  an ``s3_env.S3Server`` (endpoint, node_endpoint, access_key, secret_key, bucket, region). Started
  when it does not run; never stopped (hack/cluster.sh down does).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
import s3_env
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from real_node import E2E_PREFIX, OPERATOR_NS, RELEASE, ROOT, RealNode, bring_up, helm_install

# Hypothesis (the fuzz tests): `ci`, the default, draws the same examples on every run and keeps no
# example database, so a CI failure reproduces by running the same test again; `explore`
# (HYPOTHESIS_PROFILE=explore) draws new ones each run and remembers failures in .hypothesis/.
# Each test sets its own example count (a few hundred in `make test`, thousands under `slow`).
_FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True, suppress_health_check=_FUZZ_HEALTH
)
settings.register_profile(
    "explore",
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis")),
    deadline=None,
    print_blob=True,
    suppress_health_check=_FUZZ_HEALTH,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the real-pod tiers need root (containers, mounts, iptables)", pytrace=False)
        pytest.skip("the real node needs root (containers, mounts, iptables); CI runs these tiers as root")
    try:
        node = bring_up()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(str(exc), pytrace=False)
    os.environ["KUBECONFIG"] = node.kubeconfig
    os.environ["PATH"] = node.bin_dir + os.pathsep + os.environ.get("PATH", "")
    yield node
    if os.environ.get("APWA_CLUSTER_STOP") == "1":
        subprocess.run(["bash", str(ROOT / "hack" / "cluster.sh"), "down"], check=False, timeout=600)


@pytest.fixture(scope="session")
def incluster_operator(real_node: RealNode) -> RealNode:
    helm_install(real_node, namespaces=[f"{E2E_PREFIX}*"])
    real_node.kubectl("-n", OPERATOR_NS, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s", timeout=320)
    return real_node


@pytest.fixture(scope="session")
def s3_server() -> s3_env.S3Server:
    try:
        return s3_env.start()
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        pytest.fail(str(exc), pytrace=False)
