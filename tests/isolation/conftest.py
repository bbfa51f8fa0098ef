"""Fixtures of the isolation tier: real pods on the real node, a NetworkPolicy engine enforcing.

* ``real_cluster`` (session): the shared ``real_node`` of tests/conftest.py (the control plane with
  the real node, images built and imported). With ``APWA_ISOLATION_EXISTING=1`` the current
  KUBECONFIG is used as it is instead (how ``hack/verify-isolation.sh`` runs these tests on any
  cluster), with the image in ``APWA_ISOLATION_IMAGE``.
* ``placement`` (session): the worker image (python3, uid 65532) and the real node's selector and
  toleration.
* ``lab`` (session): two namespaces (one enforcing Pod Security ``restricted``), the subtask pods
  of several workloads rendered by apwa, and a bystander pod; all deleted at the end.

Each guarantee's test carries ``@pytest.mark.isolation("ISO-...")`` and runs as two cases,
``guarded`` (the guard in place: the probe is blocked) and ``control`` (the guard removed or
relaxed: the same probe gets through). ``test_isolation_meta.py`` runs last and fails when an id of
docs/isolation.md has no passed case of each kind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))  # helpers.wait_for, shared with that tier

from helpers import wait_for  # noqa: E402
from isolation_lab import PSA_LABELS, Lab, Placement, apply, kubectl, unique  # noqa: E402
from real_node import NODE_LABEL, NODE_TOLERATION, RealNode  # noqa: E402

HERE = Path(__file__).resolve().parent
OUTCOMES = pytest.StashKey[dict[tuple[str, str], list[str]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "isolation(id): the docs/isolation.md guarantee this test proves")
    config.stash[OUTCOMES] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The meta test checks the others' outcomes: it runs after every other test."""
    meta = [i for i in items if Path(str(i.path)).name == "test_isolation_meta.py"]
    items[:] = [i for i in items if i not in meta] + meta


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    marker = item.get_closest_marker("isolation")
    if marker and report.when == "call":
        case = item.callspec.params.get("case", "") if hasattr(item, "callspec") else ""
        item.config.stash[OUTCOMES].setdefault((marker.args[0], case), []).append(report.outcome)
    return report


@pytest.fixture(scope="session")
def outcomes(request: pytest.FixtureRequest) -> dict[tuple[str, str], list[str]]:
    return request.config.stash[OUTCOMES]


@pytest.fixture(scope="session")
def real_cluster(request: pytest.FixtureRequest) -> RealNode | None:
    """The shared real node (tests/conftest.py), unless APWA_ISOLATION_EXISTING=1 names a cluster."""
    if os.environ.get("APWA_ISOLATION_EXISTING") == "1":
        return None
    return request.getfixturevalue("real_node")


@pytest.fixture(scope="session")
def placement(real_cluster: RealNode | None) -> Placement:
    if real_cluster is None:
        selector = os.environ.get("APWA_ISOLATION_NODE_SELECTOR", "")
        return Placement(
            image=os.environ["APWA_ISOLATION_IMAGE"],
            node_selector=dict(kv.split("=", 1) for kv in selector.split(",") if kv),
            tolerations=[{"operator": "Exists"}] if selector else [],
        )
    return Placement(
        image=real_cluster.images["worker"],
        node_selector=dict(NODE_LABEL),
        tolerations=[dict(NODE_TOLERATION)],
    )


def _namespace(name: str, labels: dict[str, str]) -> None:
    apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(lambda: kubectl("get", "serviceaccount", "-n", name, "default", "-o", "name"), 60, f"{name}/default SA")


@pytest.fixture(scope="session")
def lab(placement: Placement) -> Iterator[Lab]:
    strict, loose = unique("apwa-iso"), unique("apwa-iso-loose")
    try:
        _namespace(strict, {**PSA_LABELS, "apwa.dev/test": "isolation"})
        _namespace(loose, {"apwa.dev/test": "isolation"})
        lab = Lab(placement, strict, loose)
        lab.add_bystander()
        lab.wait_running_bystander()
        build_workloads(lab)
        lab.wait_running()
        yield lab
    finally:
        for ns in (strict, loose):
            kubectl("delete", "namespace", ns, "--wait=true", "--ignore-not-found", timeout=300)


def build_workloads(lab: Lab) -> None:
    """The workloads every test draws on. Their NetworkPolicies are applied only by the tests."""
    lab.add_workload("alpha", 2, {})  # the defaults: egress None, restricted, read-only root
    lab.add_workload("beta", 1, {})
    lab.add_workload("dns", 1, {"egress": "DNS"})
    bystander = lab.ips[lab.bystander]
    lab.add_workload(
        "custom",
        1,
        {"egress": "Custom", "egressRules": [{"cidr": f"{bystander}/32", "ports": [{"port": 8080}]}]},
    )
    lab.add_workload("writable", 1, {"readOnlyRootFilesystem": False})
    lab.add_workload("token", 1, {"serviceAccountToken": True})
    # Pod Security off (and root): only in the namespace that does not enforce `restricted`.
    lab.add_workload(
        "loose", 1, {"podSecurity": "Unrestricted"}, namespace=lab.loose_namespace, security={"runAsUser": 0}
    )
