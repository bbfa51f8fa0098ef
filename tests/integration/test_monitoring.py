"""The chart's Grafana dashboard and alert rules against what the operator really exports.

* Every metric that a dashboard panel, a dashboard variable or an alert expression selects is
  exported by a real operator process (its /metrics, scraped after a run on the local control
  plane that created every labelled series: workloads finished, a subtask failed, an API error),
  with the label names its matchers use; and every apwa_ metric is on the dashboard.
* The per-workload series (progress time, failures, failure budget) follow a real workload:
  present while it runs, the progress time dropped while suspended, everything dropped when it
  is deleted or finishes.
* promtool (built from Go modules, hack/testenv-build.sh promtool) checks the rendered rules and
  runs their unit tests (promtool/alerts.test.yaml: input series, expected alerts), and parses
  every dashboard query as a recording rule.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import temporary_namespace, tool_dir, wait_for
from kubernetes import client
from operator_proc import OperatorProcess
from prometheus_client.parser import text_string_to_metric_families
from promql_names import Selector, grafana_variable_selectors, selectors
from test_chart import CHART, helm_template, run
from workloads import Workloads, pod_template, workload

HERE = Path(__file__).resolve().parent
DASHBOARD = CHART / "dashboards" / "apwa.json"
RELEASE, RELEASE_NS = "apwa", "apwa-system"  # promtool/alerts.test.yaml's series carry these
# Made by Prometheus for each scrape target, never by the operator.
SCRAPE_METRICS = {"up"}
# Labels Prometheus adds to every series it scrapes through the chart's ServiceMonitor.
TARGET_LABELS = {"job", "namespace", "instance", "pod", "service", "endpoint", "container"}
PER_WORKLOAD = (
    "apwa_workload_last_progress_timestamp_seconds",
    "apwa_workload_failed_subtasks",
    "apwa_workload_failure_budget_subtasks",
)

Exported = dict[str, set[str]]  # sample name -> label names


# ---- what the chart ships ----------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title or variable name, query) for every query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out = [(f"var {v['name']}", v["definition"]) for v in dash["templating"]["list"] if v["type"] == "query"]
    for panel in dash["panels"]:
        out += [(f"{panel['title']} {t['refId']}", t["expr"]) for t in panel.get("targets", [])]
    return out


def rendered_rules(tools: Path) -> list[dict[str, Any]]:
    args = ["--set", "prometheusRule.enabled=true", "--show-only", "templates/prometheusrule.yaml"]
    proc = helm_template(tools, RELEASE, RELEASE_NS, *args)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["spec"]["groups"]


def alert_expressions(tools: Path) -> list[tuple[str, str]]:
    return [(r["alert"], r["expr"]) for g in rendered_rules(tools) for r in g["rules"]]


QUERIES = dashboard_queries()


@pytest.fixture(scope="module")
def tools() -> Path:
    return tool_dir("helm", "kubeconform")


@pytest.fixture(scope="module")
def promtool() -> Path:
    return tool_dir("promtool") / "promtool"


# ---- what the operator exports -----------------------------------------------------------------


def scrape(op: OperatorProcess) -> Exported:
    out: Exported = defaultdict(set)
    for family in text_string_to_metric_families(op.metrics()):
        for sample in family.samples:
            out[sample.name] |= set(sample.labels)
    return out


def series(op: OperatorProcess, name: str, ns: str, workload_name: str) -> float | None:
    """One per-workload series' value, None when the operator does not export it."""
    for family in text_string_to_metric_families(op.metrics()):
        for s in family.samples:
            if s.name == name and s.labels == {"workload_namespace": ns, "workload": workload_name}:
                return s.value
    return None


def merge(into: Exported, more: Exported) -> None:
    for name, labels in more.items():
        into.setdefault(name, set()).update(labels)


FLAKY = {"KWOK_OUTCOME": "fail", "KWOK_MESSAGE": "nope"}
# kwok runs no agent: the pod's termination message is the envelope an agent writes, usage included.
AGENT = {"url": "http://10.254.0.1:8765/v1", "model": "stub-7b", "prompt": "look at {{ item }}"}
AGENT_MESSAGE = '{"apwa":1,"value":1,"usage":{"prompt_tokens":5,"completion_tokens":2,"requests":1,"retries":0}}'
HOLD = {"KWOK_OUTCOME": "hold"}  # the pod stays Running until the workload goes


@pytest.fixture(scope="module")
def exported(api: client.ApiClient, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """What a fresh operator exports after a run that creates every labelled series.

    In its own namespace (with a Job quota of 1: the second Job is refused with 403, an API error)
    a workload finishes after one failure within its budget, an agent workload reports its model
    usage, and a third one is scraped while it runs (the per-workload series exist only then).
    """
    name = f"mon-{uuid.uuid4().hex[:6]}"
    with temporary_namespace(api, name, {"apwa.dev/test": "integration"}) as ns:
        op = OperatorProcess(tmp_path_factory.mktemp("monitoring-operator"), args=["--namespace", ns])
        op.start()
        try:
            yield run_scenario(api, ns, op)
        finally:
            op.stop()


def run_scenario(api: client.ApiClient, ns: str, op: OperatorProcess) -> Exported:
    w = Workloads(api, ns)
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="jobs"), spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "1"})
    )
    w.core.create_namespaced_resource_quota(ns, quota)
    wait_for(
        lambda: (w.core.read_namespaced_resource_quota_status("jobs", ns).status.hard or {}).get("count/jobs.batch"),
        30,
        "the quota to be active",
    )
    templates = {
        "default": {"podTemplate": pod_template(), "ttlSecondsAfterFinished": 0},
        "flaky": {"podTemplate": pod_template(FLAKY), "ttlSecondsAfterFinished": 0},
    }
    items = {"items": [1, {"template": "flaky"}]}
    w.create(workload("done", items, templates=templates, parallelism=2, failurePolicy={"maxFailedSubtasks": 1}))
    w.wait_condition("done", "Complete", timeout=240)
    w.core.delete_namespaced_resource_quota("jobs", ns)
    wait_for(lambda: not w.core.list_namespaced_resource_quota(ns).items, 30, "the quota to be gone")
    w.create(workload("agent", {"range": {"end": 2}}, {"KWOK_MESSAGE": AGENT_MESSAGE}, agent=AGENT))
    w.wait_condition("agent", "Complete")
    templates = {"default": {"podTemplate": pod_template(HOLD)}, "flaky": {"podTemplate": pod_template(FLAKY)}}
    w.create(workload("running", items, templates=templates, failurePolicy={"maxFailedSubtasks": 3}))
    wait_for(lambda: series(op, PER_WORKLOAD[1], ns, "running") == 1, 120, "one failure of the running workload")
    out = scrape(op)
    w.delete("running")
    return out


def test_the_run_created_the_labelled_series(exported: Exported) -> None:
    """The scenario did what the checks below rely on (else they would pass on an empty scrape)."""
    assert {"code"} <= exported["apwa_api_errors_total"], "no API error was counted"
    assert {"phase"} <= exported["apwa_workloads"]
    for name in PER_WORKLOAD:
        assert {"workload_namespace", "workload"} <= exported[name], name
    assert "apwa_workload_duration_seconds_count" in exported
    assert {"workload_namespace", "workload", "model", "kind"} <= exported["apwa_agent_tokens_total"]


def check_selectors(found: list[Selector], exported: Exported) -> list[str]:
    """Problems with `found` against the scrape: names not exported, matchers on absent labels."""
    problems = []
    for s in found:
        if s.metric in SCRAPE_METRICS:
            labels = set()
        elif s.metric in exported:
            labels = exported[s.metric]
        else:
            hint = " (a counter: its samples end in _total)" if f"{s.metric}_total" in exported else ""
            problems.append(f"{s.metric} is not exported{hint}")
            continue
        unknown = s.labels - labels - TARGET_LABELS
        if unknown:
            problems.append(f"{s.metric} has no label {sorted(unknown)}")
    return problems


@pytest.mark.parametrize(("where", "query"), QUERIES, ids=[q[0] for q in QUERIES])
def test_dashboard_query_uses_exported_metrics(exported: Exported, where: str, query: str) -> None:
    found = grafana_variable_selectors(query) if where.startswith("var ") else selectors(query)
    assert found, f"no metric in {query!r}"
    assert check_selectors(found, exported) == []


def test_alert_expressions_use_exported_metrics(exported: Exported, tools: Path) -> None:
    problems = {}
    for alert, expr in alert_expressions(tools):
        found = selectors(expr)
        assert found, f"{alert}: no metric in {expr!r}"
        if issues := check_selectors(found, exported):
            problems[alert] = issues
    assert problems == {}


def test_the_check_catches_a_wrong_name(exported: Exported) -> None:
    """Control case: a counter without _total, an unknown metric and an unknown label are reported."""
    found = selectors('rate(apwa_subtasks_failed[5m]) + apwa_nope + apwa_workloads{state="x"}')
    assert check_selectors(found, exported) == [
        "apwa_subtasks_failed is not exported (a counter: its samples end in _total)",
        "apwa_nope is not exported",
        "apwa_workloads has no label ['state']",
    ]


def family(sample: str) -> str:
    """The metric a sample belongs to: a histogram's _bucket/_count/_sum, a counter's _total/_created."""
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def test_every_operator_metric_is_on_the_dashboard(exported: Exported) -> None:
    on_dashboard = {family(s.metric) for where, q in QUERIES for s in selectors(q) if not where.startswith("var ")}
    ours = {family(n) for n in exported if n.startswith("apwa_")}
    assert sorted(ours - on_dashboard) == [], "add a panel for these to charts/apwa/dashboards/apwa.json"


# ---- the per-workload series follow the workload -------------------------------------------------


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


def values(op: OperatorProcess, ns: str, name: str) -> dict[str, float | None]:
    return {m: series(op, m, ns, name) for m in PER_WORKLOAD}


def test_per_workload_series_follow_the_workload(w: Workloads, operator: OperatorProcess) -> None:
    templates = {"default": {"podTemplate": pod_template(HOLD)}, "flaky": {"podTemplate": pod_template(FLAKY)}}
    started = time.time()
    w.create(
        workload(
            "wl", {"items": [1, {"template": "flaky"}]}, templates=templates, failurePolicy={"maxFailedSubtasks": 2}
        )
    )
    progress, failed, budget = PER_WORKLOAD
    now = wait_for(lambda: (v := values(operator, w.ns, "wl"))[failed] == 1 and v, 120, "one failure counted")
    assert now[budget] == 2
    assert started - 1 <= now[progress] <= time.time()  # type: ignore[operator]

    w.patch("wl", {"suspend": True})
    w.wait_phase("wl", "Suspended")
    held = wait_for(lambda: (v := values(operator, w.ns, "wl"))[progress] is None and v, 60, "progress dropped")
    assert held[failed] == 1 and held[budget] == 2  # suspended is not stalled, but failures still count

    resumed_at = time.time()
    w.patch("wl", {"suspend": False})
    again = wait_for(lambda: values(operator, w.ns, "wl")[progress], 60, "progress back after resuming")
    assert again >= resumed_at - 1

    w.delete("wl")
    wait_for(lambda: set(values(operator, w.ns, "wl").values()) == {None}, 60, "every series of wl dropped")


def test_a_finished_workload_has_no_per_workload_series(w: Workloads, operator: OperatorProcess) -> None:
    w.create(workload("fin", {"range": {"end": 2}}))
    wait_for(lambda: values(operator, w.ns, "fin")[PER_WORKLOAD[0]], 60, "progress of the running workload")
    w.wait_condition("fin", "Complete")
    wait_for(lambda: set(values(operator, w.ns, "fin").values()) == {None}, 30, "every series of fin dropped")


# ---- promtool: syntax of rules and queries, and the alerts' unit tests --------------------------


def write_rules(tools: Path, out: Path) -> Path:
    path = out / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rendered_rules(tools)}))
    return path


def test_promtool_checks_the_rules(promtool: Path, tools: Path, tmp_path: Path) -> None:
    rules = write_rules(tools, tmp_path)
    proc = run([str(promtool), "check", "rules", str(rules)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout, proc.stdout


def test_promtool_rule_tests(promtool: Path, tools: Path, tmp_path: Path) -> None:
    write_rules(tools, tmp_path)
    shutil.copy(HERE / "promtool" / "alerts.test.yaml", tmp_path)
    proc = run([str(promtool), "test", "rules", str(tmp_path / "alerts.test.yaml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


def test_promtool_rule_tests_fail_on_a_wrong_threshold(promtool: Path, tools: Path, tmp_path: Path) -> None:
    """Control case: the same tests against rules with another stall threshold fail."""
    args = ["--set", "prometheusRule.enabled=true", "--set", "prometheusRule.rules.workloadStalled.minutes=60"]
    proc = helm_template(tools, RELEASE, RELEASE_NS, *args, "--show-only", "templates/prometheusrule.yaml")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": yaml.safe_load(proc.stdout)["spec"]["groups"]}))
    shutil.copy(HERE / "promtool" / "alerts.test.yaml", tmp_path)
    proc = run([str(promtool), "test", "rules", str(tmp_path / "alerts.test.yaml")])
    assert proc.returncode != 0 and "APWAWorkloadStalled" in proc.stdout + proc.stderr, proc.stdout


# Grafana's variables, as Grafana would substitute them, so promtool can parse the queries.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "6h", '"$job"': '".+"'}


def test_promtool_parses_every_dashboard_query(promtool: Path, tmp_path: Path) -> None:
    rules = []
    for i, (where, query) in enumerate(QUERIES):
        if where.startswith("var "):
            continue  # label_values() is Grafana's, not PromQL; its selector is checked above
        for var, value in GRAFANA_VARS.items():
            query = query.replace(var, value)
        assert "$" not in query, f"{where}: a Grafana variable promtool cannot parse: {query}"
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([str(promtool), "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout, proc.stdout
