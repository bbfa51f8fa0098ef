"""The chart's RBAC is enough for the operator, and no more than it uses.

* Pure (no cluster; needs helm): the rendered rules hold no wildcard, and are exactly the list
  below, where every entry names the code that needs it. A rule added to the chart without a
  reason here, or a rule removed that the code still needs, fails.
* Live: the chart's ServiceAccount and RBAC are applied to the local cluster, the operator runs
  with that ServiceAccount's token (a kubeconfig holding only that token), and real workloads
  (a range of 3 with a reduce step and Job TTLs, one whose subtasks fail, one planned from a
  ConfigMap that deletes itself after finishing, one planned by an HTTP planner whose API key is
  in a Secret) reach Complete / Failed / deleted, with no 403 in the operator's log.
  `kubectl auth can-i` then shows that what the operator does not use is denied.

Why a token and not kubeconfig impersonation (`as:`): neither the kubernetes Python client that
loads the operator's credentials nor kopf implements `as:` (the field is ignored, and the operator
would silently run as the admin). A TokenRequest token for the ServiceAccount is the identity the
operator has in a pod.

The operator under test watches only this test's namespace (`--namespace`); its name starts with
`rbac-`, which the session's operator does not watch, so the two never handle the same workload.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Cluster, temporary_namespace, tool_dir, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_proc import OperatorProcess
from scripted_server import Reply, Server
from workloads import Workloads, pod_template, workload

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "apwa"
TIMEOUT = 120.0
PLANNER_SECRET, PLANNER_KEY = "planner-key", "s3cret-for-rbac-test"
DENIED = re.compile(r"(?<![\d,.:])403(?!\d)|[Ff]orbidden|Not enough permissions")

# (apiGroup, resource) -> verbs: everything the operator does through the API, and why.
NAMESPACED_RULES: dict[tuple[str, str], set[str]] = {
    # kopf's watch of workloads (handlers.workload_event): list + watch; delete: the workload's own
    # spec.ttlSecondsAfterFinished (WorkloadRunner._finished_housekeeping).
    ("apwa.dev", "parallelworkloads"): {"list", "watch", "delete"},
    # The status writer (WorkloadRunner._write_status: merge patch of /status).
    ("apwa.dev", "parallelworkloads/status"): {"patch"},
    # Children carry ownerReferences with blockOwnerDeletion=true (rendering.jobs.metadata); with the
    # OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) that needs update on
    # the owner's finalizers, without it every child creation is forbidden.
    ("apwa.dev", "parallelworkloads/finalizers"): {"update"},
    # Subtask and reduce Jobs: create (_create, _start_reduce), get (an existing Job with our name,
    # _create), list (_seed after a restart), watch (controller/watch.py ChildWatch), patch (TTL after
    # the outcome is stored, _release_recorded; suspend/resume, _apply_suspend).
    ("batch", "jobs"): {"create", "get", "list", "watch", "patch"},
    # Results travel in pod termination messages: list (_seed), watch (controller/watch.py ChildWatch);
    # patch: the apwa.dev/result finalizer removed once the outcome is stored (controller/finalizers.py).
    ("", "pods"): {"list", "watch", "patch"},
    # Result chunks (store.ResultStore: create, update = PUT, list), the reduce input (create) and
    # configMapRef plans (get, _config_map_data).
    ("", "configmaps"): {"create", "get", "list", "update"},
    # One isolation NetworkPolicy per workload (step; "already exists" is success, no get needed).
    ("networking.k8s.io", "networkpolicies"): {"create"},
    # Events on the workload, the operator's (_event) and kopf's (warnings and handler errors).
    ("", "events"): {"create"},
    # rbac.kueue (default true): spec.suspend of a Kueue-queued workload (controller/kueue.py) lists
    # the Kueue Workloads of its Jobs and patches their spec.active.
    ("kueue.x-k8s.io", "workloads"): {"list", "patch"},
}
KUEUE_RULE = ("kueue.x-k8s.io", "workloads")
# Only with rbac.plannerSecretNames: get on exactly those Secrets (planner API keys,
# controller.dynamic._api_key), restricted by resourceNames.
PLANNER_SECRET_RULE = ("", "secrets")
# kopf's resource observer lists and watches CRDs (to notice the watched CRD appearing).
CRD_DISCOVERY: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
# Only when kopf is given namespaces (not cluster-wide): it lists and watches namespaces to match them.
NAMESPACE_DISCOVERY: dict[tuple[str, str], set[str]] = {("", "namespaces"): {"list", "watch"}}

Rules = dict[tuple[str, str], set[str]]


@pytest.fixture(scope="module")
def helm() -> str:
    return str(tool_dir("helm") / "helm")


def kube_version() -> str:
    for line in (REPO / "testenv" / "versions.env").read_text().splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBE_VERSION missing from testenv/versions.env")


def render_rbac(helm: str, release: str, namespace: str, *sets: str) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC objects, as `helm template` renders them."""
    cmd = [helm, "template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version()]
    cmd += ["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rules_of(obj: dict[str, Any], secret_names: list[str] | None = None) -> Rules:
    """A Role's or ClusterRole's rules as (group, resource) -> verbs; fails on any wildcard, and on
    resourceNames anywhere but the planner-Secret rule (where they must be `secret_names`)."""
    out: Rules = {}
    for rule in obj.get("rules") or []:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            values = rule.get(field) or []
            assert not any("*" in v for v in values), f"{obj['kind']} {obj['metadata']['name']}: wildcard in {rule}"
        assert not rule.get("nonResourceURLs"), f"the operator uses no non-resource URLs: {rule}"
        keys = [(g, r) for g in rule["apiGroups"] for r in rule["resources"]]
        if keys == [PLANNER_SECRET_RULE]:
            # Never every Secret: only the named ones, and only get.
            assert rule.get("resourceNames") == secret_names and rule["verbs"] == ["get"], rule
        else:
            assert not rule.get("resourceNames"), f"unexpected resourceNames restriction: {rule}"
        for key in keys:
            out.setdefault(key, set()).update(rule["verbs"])
    return out


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of `kind` that grant the workloads' permissions (not leader election's)."""
    return [d for d in docs if d["kind"] == kind and not d["metadata"]["name"].endswith("-leader")]


def test_leader_election_may_touch_only_its_lease(helm: str) -> None:
    docs = render_rbac(helm, "apwa", "apwa-system")
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "apwa-leader"]
    assert role["metadata"]["namespace"] == "apwa-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["apwa"],
            "verbs": ["get", "update"],
        },
    ]
    off = render_rbac(helm, "apwa", "apwa-system", "leaderElection.enabled=false", "replicas=1")
    assert not [d for d in off if d["metadata"]["name"].endswith("-leader")]


def test_rules_cluster_wide_are_exactly_what_the_code_uses(helm: str) -> None:
    docs = render_rbac(helm, "apwa", "apwa-system")
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    (role,) = by_kind(docs, "ClusterRole")
    assert rules_of(role) == {**NAMESPACED_RULES, **CRD_DISCOVERY}
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "apwa"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "apwa", "namespace": "apwa-system"}]


def test_rules_namespaced_are_exactly_what_the_code_uses(helm: str) -> None:
    docs = render_rbac(helm, "apwa", "apwa-system", "watchNamespaces={team-a,team-b}")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == NAMESPACED_RULES
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "apwa", "namespace": "apwa-system"}]
    assert len(by_kind(docs, "RoleBinding")) == 2
    # The only cluster-scoped grant: read-only discovery of namespaces and CRDs.
    (discovery,) = by_kind(docs, "ClusterRole")
    assert rules_of(discovery) == {**NAMESPACE_DISCOVERY, **CRD_DISCOVERY}
    for verbs in rules_of(discovery).values():
        assert verbs <= {"get", "list", "watch"}


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rules_without_kueue_leave_its_workloads_alone(helm: str, mode: str) -> None:
    sets = ["rbac.kueue=false"] + (["watchNamespaces={team-a}"] if mode == "namespaced" else [])
    (role,) = by_kind(
        render_rbac(helm, "apwa", "apwa-system", *sets), "Role" if mode == "namespaced" else "ClusterRole"
    )
    rules = rules_of(role)
    assert KUEUE_RULE not in rules
    assert {k: v for k, v in rules.items() if k in NAMESPACED_RULES} == {
        k: v for k, v in NAMESPACED_RULES.items() if k != KUEUE_RULE
    }


def test_rules_namespaced_without_discovery_have_no_cluster_scope(helm: str) -> None:
    docs = render_rbac(helm, "apwa", "apwa-system", "watchNamespaces={team-a}", "rbac.clusterDiscovery=false")
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rules_planner_secrets_only_by_name(helm: str, mode: str) -> None:
    names = ["llm-key", "vllm-key"]
    sets = ["rbac.plannerSecretNames={llm-key,vllm-key}"]
    if mode == "namespaced":
        sets.append("watchNamespaces={team-a}")
    docs = render_rbac(helm, "apwa", "apwa-system", *sets)
    if mode == "namespaced":
        (role,) = by_kind(docs, "Role")
        (discovery,) = by_kind(docs, "ClusterRole")
        assert rules_of(discovery) == {**NAMESPACE_DISCOVERY, **CRD_DISCOVERY}
        assert rules_of(role, names) == {**NAMESPACED_RULES, PLANNER_SECRET_RULE: {"get"}}
    else:
        (role,) = by_kind(docs, "ClusterRole")
        assert rules_of(role, names) == {**NAMESPACED_RULES, PLANNER_SECRET_RULE: {"get"}, **CRD_DISCOVERY}


def test_rules_checker_rejects_wildcards_and_unrestricted_secrets() -> None:
    # The check itself must be able to fail: a wildcard anywhere in a rule is reported.
    for rule in (
        {"apiGroups": ["*"], "resources": ["jobs"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs/*"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["*"]},
    ):
        with pytest.raises(AssertionError, match="wildcard"):
            rules_of({"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": [rule]})
    # ... and so is reading Secrets beyond the named planner keys.
    every_secret = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    with pytest.raises(AssertionError):
        rules_of({"kind": "Role", "metadata": {"name": "x"}, "rules": [every_secret]}, ["llm"])


# ---- live ------------------------------------------------------------------------------------


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, check=check, timeout=120)


def sa_kubeconfig(cluster: Cluster, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig whose only credential is a short-lived token of the ServiceAccount."""
    token = kubectl("create", "token", sa, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster_entry["cluster"]}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": sa, "namespace": namespace}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture
def rbac_namespace(api: client.ApiClient) -> Iterator[str]:
    """A namespace outside the session prefix: only the operator started by this test handles it."""
    with temporary_namespace(api, f"rbac-{uuid.uuid4().hex[:8]}", {"apwa.dev/test": "rbac"}) as name:
        yield name


def can_i(sa_user: str, *args: str) -> bool:
    # `kubectl auth can-i` exits 0 for yes and 1 for no; the admin may impersonate for the check.
    return kubectl("auth", "can-i", *args, f"--as={sa_user}", check=False).returncode == 0


@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
@pytest.mark.usefixtures("crd")
def test_operator_runs_with_exactly_the_chart_rbac(
    cluster: Cluster,
    api: client.ApiClient,
    helm: str,
    rbac_namespace: str,
    planner: Server,
    tmp_path: Path,
    mode: str,
) -> None:
    ns = rbac_namespace
    release = ns  # unique, so the cluster-scoped objects of concurrent runs never collide
    sets = [f"rbac.plannerSecretNames={{{PLANNER_SECRET}}}"]
    if mode == "namespaced":
        sets.append(f"watchNamespaces={{{ns}}}")
    docs = render_rbac(helm, release, ns, *sets)
    # The release name holds no "apwa", so the chart names everything "<release>-apwa".
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    sa_user = f"system:serviceaccount:{ns}:{sa}"
    extra: list[dict[str, Any]] = []
    if mode == "cluster-wide":
        # The chart runs this mode's operator cluster-wide, where kopf never lists namespaces; here
        # it must watch only this namespace (so as not to take over other tests' workloads), and
        # kopf then lists/watches namespaces. Grant exactly that (what the namespaced mode's
        # discovery ClusterRole grants), and nothing else, on top of the chart's rules.
        name = f"{release}-test-namespaces"
        extra = [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            },
        ]
    # Namespaced objects go with the namespace; cluster-scoped ones are deleted by name.
    cluster_scoped = [d for d in docs + extra if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    op: OperatorProcess | None = None
    try:
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs + extra))
        kubeconfig = sa_kubeconfig(cluster, ns, sa, tmp_path / "operator.kubeconfig")
        # The RBAC must be in force before the operator starts (it is read on every request, but a
        # watch that starts forbidden only retries after kopf's backoff).
        wait_for(lambda: can_i(sa_user, "list", "jobs", "-n", ns), 30, f"{sa_user} may list jobs")
        op = OperatorProcess(tmp_path / "logs", extra_env={"KUBECONFIG": str(kubeconfig)}, args=["--namespace", ns])
        op.start()
        run_workloads(api, ns, planner)
        op.stop()
        log = op.log_path.read_text()
        # A 403 status (not the milliseconds of a timestamp, ",403", nor part of a port number),
        # the API's "forbidden" message, or kopf's warning when it falls back for lack of rights.
        denied = [line for line in log.splitlines() if DENIED.search(line)]
        assert not denied, "operator log shows permission errors:\n" + "\n".join(denied[:20])
        check_nothing_more(sa_user, ns, mode)
    finally:
        if op is not None:
            op.stop()
        for d in cluster_scoped:
            kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "--ignore-not-found", check=False)


def planner_server() -> Server:
    """An HTTP decomposer on 127.0.0.1 that answers two subtasks; its recorded requests show the
    Authorization header (proof that the operator read the key Secret)."""
    return Server([Reply(body={"subtasks": ["alpha", "beta"]})])


@pytest.fixture
def planner() -> Iterator[Server]:
    with planner_server() as server:
        yield server


def run_workloads(api: client.ApiClient, ns: str, planner: Server) -> None:
    w = Workloads(api, ns)
    # A range of 3, each Job with a TTL (patched once its outcome is stored), then a reduce step.
    templates = {
        "default": {
            "podTemplate": pod_template({"KWOK_MESSAGE": '{"sq": {{ item }}}'}),
            "ttlSecondsAfterFinished": 600,
        },
        "sum": {"podTemplate": pod_template({"KWOK_MESSAGE": '"reduced"'})},
    }
    w.create(workload("squares", {"range": {"end": 3}}, templates=templates, results={"reduce": {"template": "sum"}}))
    # Every subtask fails: the workload ends Failed, with failed-subtask status and Warning events.
    failing = {"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "3", "KWOK_MESSAGE": "boom"}
    w.create(workload("broken", {"range": {"end": 3}}, failing, parallelism=1))
    # Items from a ConfigMap the operator reads; the workload deletes itself 1 s after finishing.
    w.core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="targets"), data={"items.json": '["a", "b"]'})
    )
    w.create(
        workload(
            "listed",
            {"configMapRef": {"name": "targets", "key": "items.json"}},
            {"KWOK_MESSAGE": '"{{ item }}"'},
            ttlSecondsAfterFinished=1,
        )
    )

    # Planned by an HTTP planner whose API key the operator reads from the one Secret it may get.
    w.core.create_namespaced_secret(
        ns,
        client.V1Secret(metadata=client.V1ObjectMeta(name=PLANNER_SECRET), string_data={"apiKey": PLANNER_KEY}),
    )
    planner_spec = {
        "type": "HTTP",
        "url": planner.url + "/plan",
        "query": "two things",
        "apiKeySecretRef": {"name": PLANNER_SECRET, "key": "apiKey"},
    }
    w.create(workload("planned", {"planner": planner_spec}, {"KWOK_MESSAGE": '"{{ item }}"'}))

    done = w.wait_condition("squares", "Complete", TIMEOUT)
    assert done["status"]["result"] == "reduced"
    assert done["status"]["counts"]["succeeded"] == 3
    assert {i: e["result"] for i, e in w.results("squares").items()} == {i: {"sq": i} for i in range(3)}
    # The TTL patch went through (the operator sets it only after storing each outcome).
    assert all(j.spec.ttl_seconds_after_finished == 600 for j in w.jobs("squares") if "reduce" not in j.metadata.name)
    netpol = client.NetworkingV1Api(api).read_namespaced_network_policy("squares-isolation", ns)
    assert netpol.spec.policy_types == ["Ingress", "Egress"]
    events = w.core.list_namespaced_event(ns, field_selector="involvedObject.name=squares").items
    assert any(e.source.component == "apwa-operator" and e.reason == "Planned" for e in events), events

    failed = w.wait_condition("broken", "Failed", TIMEOUT)
    assert failed["status"]["failedSubtasks"][0]["exitCode"] == 3

    def listed_gone() -> bool:
        try:
            w.get("listed")
        except ApiException as exc:
            return exc.status == 404
        return False

    planned = w.wait_condition("planned", "Complete", TIMEOUT)
    assert [r["result"] for r in planned["status"]["result"]] == ["alpha", "beta"]
    assert [r.headers.get("authorization") for r in planner.requests] == [f"Bearer {PLANNER_KEY}"]
    w.core.read_namespaced_config_map("planned-plan", ns)  # the stored plan

    wait_for(listed_gone, TIMEOUT, f"{ns}/listed deleted by its ttlSecondsAfterFinished ({w.describe('listed')})")


def check_nothing_more(sa_user: str, ns: str, mode: str) -> None:
    """What the operator does not use is denied to its identity."""
    denied = [
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods"),
        ("update", "pods"),
        ("delete", "pods"),
        ("delete", "jobs"),
        ("update", "jobs"),
        ("delete", "configmaps"),
        ("update", "parallelworkloads.apwa.dev"),
        ("create", "parallelworkloads.apwa.dev"),
        ("create", "serviceaccounts"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("delete", "networkpolicies.networking.k8s.io"),
        ("create", "workloads.kueue.x-k8s.io"),
        ("delete", "workloads.kueue.x-k8s.io"),
        ("get", "workloads.kueue.x-k8s.io"),
        ("patch", "clusterqueues.kueue.x-k8s.io"),
    ]
    for verb, resource in denied:
        assert not can_i(sa_user, verb, resource, "-n", ns), f"{sa_user} may {verb} {resource}"
    assert can_i(sa_user, "create", "jobs.batch", "-n", ns)
    assert can_i(sa_user, "patch", "workloads.kueue.x-k8s.io", "-n", ns)  # spec.suspend of a queued workload
    # Secrets: the named planner key only.
    assert can_i(sa_user, "get", f"secrets/{PLANNER_SECRET}", "-n", ns)
    assert not can_i(sa_user, "get", "secrets/other", "-n", ns)
    other = "default"
    if mode == "namespaced":
        assert not can_i(sa_user, "list", "jobs.batch", "-n", other), "a namespaced install reaches other namespaces"
    else:
        assert can_i(sa_user, "list", "jobs.batch", "-n", other)
    assert not can_i(sa_user, "create", "namespaces")
    assert not can_i(sa_user, "create", "customresourcedefinitions.apiextensions.k8s.io")
