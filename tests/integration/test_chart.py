"""The Helm chart: lint, render, and validate every rendered object, offline and against the cluster.

Validation has two independent layers, both without the internet:

* kubeconform -strict, with JSON schemas generated here from the local API server's own OpenAPI
  document (built-in kinds, same Kubernetes version as testenv/versions.env), from the chart's
  CRD (ParallelWorkload, used to validate examples/), and from minimal ServiceMonitor and
  PrometheusRule schemas (prometheus-operator's CRDs are not available offline; see
  SERVICEMONITOR_SCHEMA, PROMETHEUSRULE_SCHEMA; promtool checks the rules themselves in
  test_monitoring.py). kubeconform's
  default schema location is on the internet, so it is never used.
* `kubectl apply --dry-run=server --validate=strict` against the local control plane: the API
  server's own validation, defaulting and admission, for every built-in object and the CRD.
  The ServiceMonitor is validated server side only where its CRD is installed (skipped, with the
  reason, otherwise); the PrometheusRule never is (no server-side check of it here). The dashboard
  ConfigMap is a built-in kind: both layers validate it.

The helm and kubeconform binaries come from hack/testenv-build.sh (built once into the cache).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Cluster, tool_dir, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "apwa"
SERVICEMONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
PROMETHEUSRULE_API = "monitoring.coreos.com/v1/PrometheusRule"
# prometheus-operator's kinds: no CRD in the local cluster, so no server-side dry run for them.
MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule")

# Rendering cases. {ns} is the case's release namespace, {a} and {b} two more namespaces; all are
# created by the test so that the server-side dry run has somewhere to put namespaced objects.
CASES: dict[str, list[str]] = {
    "default": [],
    "namespaced": ["--set", "watchNamespaces={{{a},{b}}}"],
    "monitoring": ["--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prometheus"],
    "dashboard": ["--set", "grafanaDashboard.enabled=true"],
    "alerting": [
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.labels.release=prometheus",
        "--set",
        "prometheusRule.alertLabels.team=batch",
        "--set",
        "prometheusRule.rules.apiErrors.enabled=false",
        "--set",
        "prometheusRule.rules.workloadStalled.minutes=45",
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "grafanaDashboard.namespace={a}",
        "--set",
        "grafanaDashboard.annotations.grafana_folder=Batch",
    ],
    "image": [
        "--set",
        "image.repository=registry.example.com/team/apwa-operator",
        "--set",
        "image.tag=1.2.3",
        "--set",
        "image.pullPolicy=Always",
    ],
    "tuned": [
        # One replica without leader election: the standalone install.
        "--set",
        "replicas=1",
        "--set",
        "leaderElection.enabled=false",
        "--set-json",
        'imagePullSecrets=[{{"name":"regcred"}}]',
        "--set",
        "image.digest=sha256:" + "ab" * 32,
        "--set",
        "operator.maxSubtasks=5000",
        "--set",
        "operator.logLevel=DEBUG",
        "--set",
        "operator.statusInterval=2.5",
        "--set",
        "metrics.port=9095",
        "--set",
        "serviceAccount.name=robot",
        "--set",
        "fullnameOverride=batch-operator",
    ],
}


@pytest.fixture(scope="module")
def tools() -> Path:
    return tool_dir("helm", "kubeconform")


def kube_version() -> str:
    for line in (REPO / "testenv" / "versions.env").read_text().splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBE_VERSION missing from testenv/versions.env")


def run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, check=False)


def helm_template(tools: Path, release: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    # --kube-version pins the capabilities to the version the test cluster runs; prometheus-operator's
    # APIs are declared because `helm template` has no cluster to ask.
    cmd = [str(tools / "helm"), "template", release, str(CHART), "--namespace", namespace]
    cmd += [
        "--kube-version",
        kube_version(),
        "--api-versions",
        SERVICEMONITOR_API,
        "--api-versions",
        PROMETHEUSRULE_API,
    ]
    cmd += args
    return run(cmd)


def render(tools: Path, case: str, names: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    args = [a.format(**names) for a in CASES[case]]
    proc = helm_template(tools, "apwa", names["ns"], "--include-crds", *args, *extra)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


@pytest.fixture(scope="module")
def names(api: client.ApiClient) -> Iterator[dict[str, str]]:
    """Three fresh namespaces (release + two watched ones), deleted after the module."""
    core = client.CoreV1Api(api)
    base = f"chart-{uuid.uuid4().hex[:6]}"
    out = {"ns": base, "a": f"{base}-a", "b": f"{base}-b"}
    for name in out.values():
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield out
    finally:
        for name in out.values():
            try:
                core.delete_namespace(name, propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    raise


# ---- offline checks ----------------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd() -> None:
    chart_crd = CHART / "crds" / "apwa.dev_parallelworkloads.yaml"
    source = REPO / "crds" / "apwa.dev_parallelworkloads.yaml"
    assert chart_crd.read_bytes() == source.read_bytes(), "run `make crd` (regenerates crds/ and the chart's copy)"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(p.name for p in (REPO / "crds").iterdir())


@pytest.mark.parametrize("case", ["default", "namespaced", "image", "tuned", "dashboard"])
def test_helm_lint_strict(tools: Path, case: str) -> None:
    # helm lint cannot declare extra APIs, so the ServiceMonitor and PrometheusRule cases are
    # rendered (below) instead.
    args = [a.format(ns="apwa-system", a="team-a", b="team-b") for a in CASES[case]]
    proc = run([str(tools / "helm"), "lint", "--strict", str(CHART), "--kube-version", kube_version(), *args])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        (["--set", "replica=2"], "additional properties 'replica' not allowed"),
        (["--set", "replicas=0"], "replicas"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "image.digest=latest"], "digest"),
        (["--set", "watchNamespaces=team-a"], "watchNamespaces"),
        (["--set", "watchNamespaces={Team_A}"], "watchNamespaces"),
        (["--set", "metrics.port=70000"], "port"),
        (["--set", "operator.logLevel=loud"], "logLevel"),
        (["--set", "serviceMonitor.interval=soon"], "interval"),
        (["--set", "prometheusRule.rules.failureRatio.ratio=2"], "ratio"),
        (["--set", "prometheusRule.rules.workloadStalled.minutes=0"], "minutes"),
        (["--set", "prometheusRule.rules.operatorDown.severity=Page Me"], "severity"),
        (["--set", "prometheusRule.rules.apiErrors.threshold=1"], "additional properties 'threshold' not allowed"),
        (["--set", "grafanaDashboard.label=grafana dashboard"], "label"),
    ],
)
def test_values_schema_rejects_bad_values(tools: Path, setting: list[str], complaint: str) -> None:
    proc = helm_template(tools, "apwa", "apwa-system", *setting)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert complaint in proc.stderr, proc.stderr


def test_servicemonitor_needs_its_api(tools: Path) -> None:
    cmd = [str(tools / "helm"), "template", "apwa", str(CHART), "--kube-version", kube_version()]
    proc = run([*cmd, "--set", "serviceMonitor.enabled=true"])
    assert proc.returncode != 0 and "needs the ServiceMonitor CRD" in proc.stderr, proc.stderr
    proc = run([*cmd, "--set", "serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"])
    assert proc.returncode != 0 and "needs metrics.service.enabled" in proc.stderr, proc.stderr


def test_prometheusrule_needs_its_api(tools: Path) -> None:
    cmd = [str(tools / "helm"), "template", "apwa", str(CHART), "--kube-version", kube_version()]
    proc = run([*cmd, "--set", "prometheusRule.enabled=true"])
    assert proc.returncode != 0 and "needs the PrometheusRule CRD" in proc.stderr, proc.stderr


def test_default_rendering(tools: Path) -> None:
    """What the default install is made of, and the operational promises of the Deployment."""
    docs = render(tools, "default", {"ns": "apwa-system"})
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
            "Service",
            "Deployment",
        ]
    )
    crd = one(docs, "CustomResourceDefinition")
    assert crd == yaml.safe_load((REPO / "crds" / "apwa.dev_parallelworkloads.yaml").read_text())
    dep = one(docs, "Deployment")
    assert dep["metadata"]["namespace"] == "apwa-system"
    # Two replicas, one acting (leader election): an upgrade adds a standby before removing one.
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    lease_rules = one(docs, "Role")["rules"]
    assert {v for r in lease_rules for v in r["verbs"]} == {"create", "get", "update"}
    assert all(r["resources"] == ["leases"] for r in lease_rules)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/apwa-dev/apwa-operator:0.1.0"
    assert "args" not in c  # the image's entrypoint is `apwa operator`
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    # No APWA_NAMESPACES: all. The store sidecar is the operator's own image by default.
    assert env == {
        "APWA_METRICS_PORT": "8080",
        "APWA_LOG_LEVEL": "INFO",
        "APWA_LEADER_ELECTION": "true",
        "APWA_LEADER_ELECTION_ID": "apwa",
        "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "APWA_LEASE_DURATION": "15",
        "APWA_RENEW_DEADLINE": "10",
        "APWA_RETRY_PERIOD": "2",
        "APWA_STORE_SIDECAR_IMAGE": "ghcr.io/apwa-dev/apwa-operator:0.1.0",
    }
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


def test_non_default_renderings(tools: Path) -> None:
    names = {"ns": "ops", "a": "team-a", "b": "team-b"}

    docs = render(tools, "namespaced", names)
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in containers[0]["env"]}
    assert env["APWA_NAMESPACES"] == "team-a,team-b"
    grants = [d for d in docs if d["kind"] in ("Role", "RoleBinding") and not d["metadata"]["name"].endswith("-leader")]
    for kind in ("Role", "RoleBinding"):
        assert sorted(d["metadata"]["namespace"] for d in grants if d["kind"] == kind) == ["team-a", "team-b"]
    assert one(docs, "ClusterRole")["metadata"]["name"] == "apwa-discovery"

    docs = render(tools, "monitoring", names)
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    # The ServiceMonitor selects the metrics Service, by its labels and its port's name.
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]]

    docs = render(tools, "alerting", names)
    check_alerting(docs)

    docs = render(tools, "image", names)
    c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example.com/team/apwa-operator:1.2.3" and c["imagePullPolicy"] == "Always"

    docs = render(tools, "tuned", names)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert dep["metadata"]["name"] == "batch-operator"
    assert c["image"] == "ghcr.io/apwa-dev/apwa-operator@sha256:" + "ab" * 32
    assert c["args"] == ["--max-subtasks=5000"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env == {
        "APWA_METRICS_PORT": "9095",
        "APWA_LOG_LEVEL": "DEBUG",
        "APWA_STATUS_INTERVAL": "2.5",
        "APWA_STORE_SIDECAR_IMAGE": "ghcr.io/apwa-dev/apwa-operator@sha256:" + "ab" * 32,
    }
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget" or d["metadata"]["name"].endswith("-leader")]
    assert c["ports"][0]["containerPort"] == 9095
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "robot" == one(docs, "ServiceAccount")["metadata"]["name"]
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "robot"


def check_alerting(docs: list[dict[str, Any]]) -> None:
    """The dashboard ConfigMap and the rules of the "alerting" case (release apwa in ops)."""
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "team-a"  # grafanaDashboard.namespace
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Batch"}
    # The file as it is, so a hand import and the sidecar show the same dashboard.
    assert json.loads(cm["data"]["apwa.json"]) == json.loads((CHART / "dashboards" / "apwa.json").read_text())
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "ops" and rule["metadata"]["labels"]["release"] == "prometheus"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    # apiErrors is switched off in this case; the others are on by default.
    assert sorted(alerts) == [
        "APWAOperatorDown",
        "APWASubtaskFailureRatioHigh",
        "APWAWorkloadFailureBudgetNearlySpent",
        "APWAWorkloadStalled",
    ]
    assert alerts["APWAWorkloadStalled"]["expr"].endswith("> 2700")  # 45 minutes
    for r in alerts.values():
        # Each expression selects this release's operator as its ServiceMonitor labels it.
        assert 'job="apwa-metrics",namespace="ops"' in r["expr"], r["expr"]
        assert r["labels"]["team"] == "batch" and r["labels"]["severity"] in ("critical", "warning")
        assert r["annotations"]["runbook_url"].endswith("monitoring.md#" + r["alert"].lower())


def test_dashboard_label_is_configurable(tools: Path) -> None:
    args = ["--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.label=dashboards"]
    proc = helm_template(tools, "apwa", "ops", *args, "--set", "grafanaDashboard.labelValue=apwa")
    assert proc.returncode == 0, proc.stderr
    cm = one([d for d in yaml.safe_load_all(proc.stdout) if d], "ConfigMap")
    assert cm["metadata"]["labels"]["dashboards"] == "apwa" and "grafana_dashboard" not in cm["metadata"]["labels"]


def test_notes_tell_what_to_do_next(cluster: Cluster, tools: Path) -> None:
    # helm install --dry-run=client still asks the cluster for its version: hence `cluster`.
    cmd = [str(tools / "helm"), "install", "apwa", str(CHART), "--dry-run=client", "--namespace", "ops"]
    proc = run([*cmd, "--set", "watchNamespaces={team-a}"])
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n ops rollout status deployment/apwa" in notes
    assert "kubectl -n team-a apply -f -" in notes and "examples/range.yaml" in notes
    assert "kubectl -n team-a get pwl" in notes
    assert "kubectl -n team-a wait --for=condition=Complete pwl/squares" in notes


# ---- schemas for kubeconform (offline) --------------------------------------------------------

# The subset of prometheus-operator's ServiceMonitor (monitoring.coreos.com/v1) the chart writes,
# typed as upstream types it. Strict: a misspelt field fails. It proves the shape of what the
# chart renders, not that every field exists upstream; the server-side check below does that
# where the real CRD is installed.
_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}


def _resource(spec: dict[str, Any]) -> dict[str, Any]:
    """A custom resource's schema around the schema of its spec."""
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
        },
    }


SERVICEMONITOR_SCHEMA: dict[str, Any] = _resource(
    {
        "type": "object",
        "required": ["selector"],
        "properties": {
            "jobLabel": {"type": "string"},
            "selector": {
                "type": "object",
                "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "matchExpressions": {"type": "array", "items": {"type": "object"}},
                },
            },
            "namespaceSelector": {
                "type": "object",
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                    },
                },
            },
        },
    }
)


# The same for PrometheusRule: prometheus-operator's rule group and rule fields, strict and typed
# (expr is a string or a number upstream: int-or-string; `for` is a Prometheus duration).
_PROM_DURATION = _DURATION  # the same Prometheus duration
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUSRULE_SCHEMA: dict[str, Any] = _resource(
    {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _PROM_DURATION,
                        "query_offset": _PROM_DURATION,
                        "limit": {"type": "integer"},
                        "labels": _STRING_MAP,
                        "partial_response_strategy": {"type": "string"},
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["expr"],
                                "properties": {
                                    "record": {"type": "string"},
                                    "alert": {"type": "string"},
                                    "expr": {"x-kubernetes-int-or-string": True},
                                    "for": _PROM_DURATION,
                                    "keep_firing_for": _PROM_DURATION,
                                    "labels": _STRING_MAP,
                                    "annotations": _STRING_MAP,
                                },
                            },
                        },
                    },
                },
            },
        },
    }
)


def strict(schema: Any) -> Any:
    """Close every object schema that lists its properties (kubectl's and kubeconform's -strict
    convention), except where Kubernetes keeps unknown fields; recurse into sub-schemas only."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if out.get("x-kubernetes-int-or-string"):
        return {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": out.get("description", "")}
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    return out


def kind_suffix(api_version: str) -> str:
    """kubeconform's {{ .KindSuffix }}: -<first label of the group>-<version>, or -<version> for core."""
    group, _, version = api_version.rpartition("/")
    return f"-{group.split('.')[0]}-{version}".lower() if group else f"-{version}".lower()


def with_identity(schema: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    props = out.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [api_version]}
    props["kind"] = {"type": "string", "enum": [kind]}
    props.setdefault("metadata", {"type": "object"})
    out["required"] = sorted({*out.get("required", []), "apiVersion", "kind"})
    return out


def write_schema(schema_dir: Path, api_version: str, kind: str, schema: dict[str, Any]) -> None:
    path = schema_dir / f"{kind.lower()}{kind_suffix(api_version)}.json"
    path.write_text(json.dumps(with_identity(schema, api_version, kind)))


def builtin_schemas(openapi_v2: dict[str, Any], schema_dir: Path) -> int:
    """One standalone strict schema per built-in kind, from the API server's /openapi/v2."""
    defs: dict[str, Any] = {}
    for name, d in openapi_v2["definitions"].items():
        if name.endswith("util.intstr.IntOrString"):
            d = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        elif name.endswith("api.resource.Quantity"):
            d = {"oneOf": [{"type": "string"}, {"type": "number"}]}
        defs[name] = strict(d)
    ref = re.compile(r'"\$ref": "#/definitions/([^"]+)"')
    written = 0
    for name, d in defs.items():
        for gvk in openapi_v2["definitions"][name].get("x-kubernetes-group-version-kind") or []:
            if gvk["kind"].endswith("List") or gvk["kind"] in ("WatchEvent", "DeleteOptions", "Status"):
                continue
            # Only the definitions this kind reaches, so each file stays small.
            needed, todo = set(), [name]
            while todo:
                n = todo.pop()
                if n not in needed:
                    needed.add(n)
                    todo += ref.findall(json.dumps(defs[n]))
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            schema = {**d, "definitions": {n: defs[n] for n in needed}}
            write_schema(schema_dir, api_version, gvk["kind"], schema)
            written += 1
    return written


def crd_schemas(crd: dict[str, Any], schema_dir: Path) -> None:
    spec = crd["spec"]
    for v in spec["versions"]:
        schema = strict(v["schema"]["openAPIV3Schema"])
        schema["additionalProperties"] = False  # the root too: apiVersion, kind, metadata, spec, status
        write_schema(schema_dir, f"{spec['group']}/{v['name']}", spec["names"]["kind"], schema)


@pytest.fixture(scope="module")
def schema_dir(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schemas")
    raw = subprocess.run(["kubectl", "get", "--raw", "/openapi/v2"], capture_output=True, check=True).stdout
    assert builtin_schemas(json.loads(raw), out) > 50
    crd_schemas(yaml.safe_load((CHART / "crds" / "apwa.dev_parallelworkloads.yaml").read_text()), out)
    write_schema(out, "monitoring.coreos.com/v1", "ServiceMonitor", strict(SERVICEMONITOR_SCHEMA))
    write_schema(out, "monitoring.coreos.com/v1", "PrometheusRule", strict(PROMETHEUSRULE_SCHEMA))
    return out


def kubeconform(tools: Path, schema_dir: Path, manifest: str) -> dict[str, Any]:
    """Runs kubeconform -strict on stdin with only the local schemas; returns its JSON report."""
    location = str(schema_dir / "{{ .ResourceKind }}{{ .KindSuffix }}.json")
    cmd = [str(tools / "kubeconform"), "-strict", "-summary", "-verbose", "-output", "json"]
    cmd += ["-schema-location", location, "-kubernetes-version", kube_version().lstrip("v"), "-"]
    proc = run(cmd, stdin=manifest)
    report = json.loads(proc.stdout)
    report["exit"] = proc.returncode
    return report


@pytest.mark.parametrize("case", sorted(CASES))
def test_kubeconform_strict(tools: Path, schema_dir: Path, case: str) -> None:
    docs = render(tools, case, {"ns": "ops", "a": "team-a", "b": "team-b"})
    report = kubeconform(tools, schema_dir, yaml.safe_dump_all(docs))
    # Every object is reported (a missing schema would be an error, never a silent skip).
    assert sorted(r["kind"] for r in report["resources"]) == sorted(d["kind"] for d in docs), report
    bad = [r for r in report["resources"] if r["status"] != "statusValid"]
    assert not bad and report["exit"] == 0, json.dumps(bad, indent=1)


def test_kubeconform_catches_mistakes(tools: Path, schema_dir: Path) -> None:
    """The schemas are strict and typed: each mistake below is reported, so valid means something."""
    base = render(tools, "monitoring", {"ns": "ops", "a": "team-a", "b": "team-b"})
    dep, sm = one(base, "Deployment"), one(base, "ServiceMonitor")
    broken: list[dict[str, Any]] = []
    d = copy.deepcopy(dep)
    d["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # misspelt field
    broken.append(d)
    d = copy.deepcopy(dep)
    d["spec"]["replicas"] = "one"  # wrong type
    broken.append(d)
    s = copy.deepcopy(sm)
    s["spec"]["endpoints"][0]["intervall"] = "30s"
    broken.append(s)
    rule = one(render(tools, "alerting", {"ns": "ops", "a": "team-a", "b": "team-b"}), "PrometheusRule")
    r = copy.deepcopy(rule)
    r["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"  # not a duration
    broken.append(r)
    r = copy.deepcopy(rule)
    r["spec"]["groups"][0]["rules"][0]["annotation"] = {}  # misspelt field
    broken.append(r)
    pwl = yaml.safe_load((REPO / "examples" / "range.yaml").read_text())
    pwl["spec"]["paralelism"] = 3
    broken.append(pwl)
    for obj in broken:
        report = kubeconform(tools, schema_dir, yaml.safe_dump(obj))
        assert [r["status"] for r in report["resources"]] == ["statusInvalid"], report


def test_kubeconform_examples_against_the_chart_crd(tools: Path, schema_dir: Path) -> None:
    """What a GitOps pipeline would do with the chart's CRD: examples/ validate strictly."""
    examples = sorted((REPO / "examples").glob("*.yaml"))
    manifest = "\n---\n".join(p.read_text() for p in examples)
    report = kubeconform(tools, schema_dir, manifest)
    kinds = [r["kind"] for r in report["resources"]]
    assert kinds.count("ParallelWorkload") == len(examples), report
    assert all(r["status"] == "statusValid" for r in report["resources"]), json.dumps(report, indent=1)


# ---- server-side validation --------------------------------------------------------------------

# Server-side apply: the CRD may already be installed (by the session's `crd` fixture, server side),
# and client-side apply would warn about its missing last-applied annotation. --force-conflicts:
# this field manager never owns anything, it only asks the API server to validate and admit.
SERVER_DRY_RUN = [
    "kubectl",
    "apply",
    "--server-side",
    "--force-conflicts",
    "--field-manager=apwa-chart-test",
    "--dry-run=server",
    "--validate=strict",
]


@pytest.mark.parametrize("case", sorted(CASES))
def test_server_side_dry_run(tools: Path, names: dict[str, str], case: str) -> None:
    docs = render(tools, case, names)
    built_in = [d for d in docs if d["kind"] not in MONITORING_KINDS]
    proc = run([*SERVER_DRY_RUN, "-f", "-"], stdin=yaml.safe_dump_all(built_in))
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr  # e.g. unknown or deprecated fields
    lines = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(lines) == len(built_in), proc.stdout


def servicemonitor_crd_installed(api: client.ApiClient) -> bool:
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.read_custom_resource_definition("servicemonitors.monitoring.coreos.com")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_servicemonitor_server_side_dry_run(tools: Path, api: client.ApiClient, names: dict[str, str]) -> None:
    if not servicemonitor_crd_installed(api):
        pytest.skip(
            "the ServiceMonitor CRD (servicemonitors.monitoring.coreos.com) is not installed in the local "
            "cluster: the ServiceMonitor is validated by kubeconform against a minimal schema only"
        )
    sm = one(render(tools, "monitoring", names), "ServiceMonitor")
    proc = run([*SERVER_DRY_RUN, "-f", "-"], stdin=yaml.safe_dump(sm))
    assert proc.returncode == 0, proc.stderr


def test_operator_pod_meets_restricted_pod_security(tools: Path, api: client.ApiClient, names: dict[str, str]) -> None:
    """The operator's pod is admitted where Pod Security 'restricted' is enforced (and a weaker one is not)."""
    core = client.CoreV1Api(api)
    ns = f"{names['ns']}-restricted"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels=labels)))
    try:
        docs = render(tools, "default", {"ns": ns})
        # Pods are admitted only with an existing ServiceAccount: create the chart's for real.
        proc = run(["kubectl", "apply", "-f", "-"], stdin=yaml.safe_dump(one(docs, "ServiceAccount")))
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: core.read_namespaced_service_account("apwa", ns), 30, "ServiceAccount apwa")
        template = one(docs, "Deployment")["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "operator", "namespace": ns, **template["metadata"]},
        }
        pod["spec"] = template["spec"]
        dry_run = ["kubectl", "apply", "--dry-run=server", "-f", "-"]
        proc = run(dry_run, stdin=yaml.safe_dump(pod))
        assert proc.returncode == 0, proc.stderr
        weaker = copy.deepcopy(pod)
        weaker["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        proc = run(dry_run, stdin=yaml.safe_dump(weaker))
        assert proc.returncode != 0 and 'violates PodSecurity "restricted:latest"' in proc.stderr, proc.stderr
    finally:
        core.delete_namespace(ns, propagation_policy="Background")
