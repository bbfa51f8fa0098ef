"""Agent usage on the real control plane: status.usage and the Prometheus counters are exact sums
over 1,000 subtasks and over every pod of retried subtasks, and the token budget stops a run.

kwok runs no agent: each pod's termination message is the envelope an agent would have written
(`KWOK_MESSAGE`, its placeholders filled per subtask by the operator), so the expected sums are
known exactly. The agent itself, on real pods against a model server, is tests/e2e/test_agents_real.py.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from kubernetes import client
from operator_proc import OperatorProcess
from workloads import Workloads, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")
AGENT = {"url": "http://10.254.0.1:8765/v1", "model": "stub-7b", "prompt": "look at {{ item }}"}


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


def envelope(prompt: str, completion: str, *, error: bool = False) -> str:
    usage = f'"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"requests":1,"retries":0}}'
    body = '"error":"rate limited","final":false' if error else '"value":{{ index }}'
    return f'{{"apwa":1,{body},{usage}}}'


def counter(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == wanted:
            return float(m.group(2))
    raise AssertionError(f"no {name}{{{wanted}}} in the operator's metrics")


def test_usage_is_summed_exactly_over_a_thousand_subtasks(w: Workloads, operator: OperatorProcess) -> None:
    n = 1000
    env = {"KWOK_DELAY_MS": "50", "KWOK_MESSAGE": envelope("{{ index }}", "3")}
    price = {"prompt": 0.5, "completion": 2, "currency": "EUR"}
    w.create(workload("usage", {"range": {"end": n}}, env, parallelism=100, agent={**AGENT, "pricePer1kTokens": price}))
    status = w.wait_condition("usage", "Complete", timeout=600)["status"]
    prompt, completion = n * (n - 1) // 2, 3 * n
    assert status["usage"] == {
        "promptTokens": prompt,
        "completionTokens": completion,
        "totalTokens": prompt + completion,
        "requests": n,
        "retries": 0,
        "modelSeconds": "0.000",
        "reports": n,
        "estimatedCost": f"{(prompt * 0.5 + completion * 2) / 1000:.4f} EUR",
    }
    labels = {"workload_namespace": w.ns, "workload": "usage", "model": "stub-7b"}
    metrics = operator.metrics()
    assert counter(metrics, "apwa_agent_tokens_total", **labels, kind="prompt") == prompt
    assert counter(metrics, "apwa_agent_tokens_total", **labels, kind="completion") == completion
    assert counter(metrics, "apwa_agent_requests_total", **labels) == n
    out = subprocess.run(["kubectl", "get", "pwl", "usage", "-n", w.ns, "-o", "wide"], capture_output=True, text=True)
    header, row = out.stdout.splitlines()[:2]
    columns = dict(zip(header.split(), row.split(), strict=False))
    assert columns["TOKENS"] == str(prompt + completion)


def test_every_attempt_of_a_retried_subtask_counts(w: Workloads) -> None:
    """Each failed pod spent tokens: a subtask retried once by its Job reports twice."""
    env = {"KWOK_OUTCOME": "fail", "KWOK_MESSAGE": envelope("7", "1", error=True)}
    templates = {"default": {"podTemplate": pod_template(env), "backoffLimit": 1}}
    w.create(
        workload(
            "retried", {"range": {"end": 5}}, templates=templates, agent=AGENT, failurePolicy={"maxFailedRatio": 1}
        )
    )
    status = w.wait_condition("retried", "Complete", timeout=240)["status"]
    assert status["counts"]["failed"] == 5
    pods = w.core.list_namespaced_pod(w.ns, label_selector="apwa.dev/workload=retried").items
    assert len(pods) == 10, "kwok and the Job controller ran two pods per subtask"
    assert (status["usage"]["promptTokens"], status["usage"]["requests"]) == (70, 10)


def test_the_token_budget_stops_new_subtasks(w: Workloads) -> None:
    n, per_subtask, budget = 100, 10, 200
    env = {"KWOK_DELAY_MS": "200", "KWOK_MESSAGE": envelope(str(per_subtask), "0")}
    agent = {**AGENT, "maxTotalTokens": budget}
    w.create(workload("budget", {"range": {"end": n}}, env, parallelism=5, agent=agent))
    status = w.wait_condition("budget", "Failed", timeout=240)["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TokenBudgetExhausted", json.dumps(status)
    assert "spec.agent.maxTotalTokens" in failed["message"]
    assert status["usage"]["totalTokens"] >= budget
    assert status["counts"]["pending"] > 0
    # Nothing starts once spent: at most a window's worth past the budget was ever created.
    assert len(w.jobs("budget")) < budget // per_subtask + 2 * 5
    assert status["counts"]["succeeded"] * per_subtask == status["usage"]["totalTokens"]
