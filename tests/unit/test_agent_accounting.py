"""What agents spend: usage summed exactly into status.usage, the token budget, the price, the
egress rule to the model, and the LLM reduce's declaration (docs/agents.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from apwa.api.models import ParallelWorkloadSpec
from apwa.api.vocabulary import Phase, Reason
from apwa.controller.store import decode_outcome, encode_outcome
from apwa.core import ChildIndex, decide
from apwa.core.actions import CreateJobs, WriteStatus
from apwa.rendering import Owner, render_network_policy
from apwa.results import SubtaskOutcome
from apwa.results.usage import UsageTotals, merged, usage_status
from core_builders import NOW, POD, done, pod_ok, running, world
from pydantic import ValidationError

AGENT = {"url": "http://10.1.2.3:8000/v1", "model": "m", "prompt": "review {{ item }}"}


def agent_spec(
    n: int = 10, parallelism: int = 3, isolation: dict[str, Any] | None = None, **agent: Any
) -> ParallelWorkloadSpec:
    return ParallelWorkloadSpec.model_validate(
        {
            "decomposition": {"range": {"end": n}},
            "parallelism": parallelism,
            "templates": {"default": {"podTemplate": POD}},
            "agent": {**AGENT, **agent},
            **({"isolation": isolation} if isolation else {}),
        }
    )


def spent(prompt: int, completion: int = 0, requests: int = 1, retries: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "requests": requests, "retries": retries}


def envelope(value: Any, usage: dict[str, Any]) -> str:
    return json.dumps({"apwa": 1, "value": value, "usage": usage})


def used(i: int, prompt: int, completion: int = 0, ok: bool = True) -> SubtaskOutcome:
    return SubtaskOutcome(
        i, ok, result=i if ok else None, reason="" if ok else "Error", usage=spent(prompt, completion)
    )


def status_of(w: Any) -> dict[str, Any]:
    return decide(w, NOW).of(WriteStatus)[0].status


# ---- the sum -----------------------------------------------------------------------------------
SUMS = [
    pytest.param([], {}, {}, 0, 0, id="nothing-yet"),
    pytest.param([used(0, 10, 2), used(1, 5, 1)], {}, {}, 15, 3, id="recorded"),
    pytest.param([used(0, 10, 2)], {1: done(1)}, {1: pod_ok(envelope(1, spent(7, 4)))}, 17, 6, id="recorded-plus-new"),
    pytest.param([used(0, 10, 2, ok=False)], {}, {}, 10, 2, id="a-failure-spent-too"),
    pytest.param([SubtaskOutcome(0, True, result=0)], {}, {}, 0, 0, id="no-usage-reported"),
]


@pytest.mark.parametrize(("outcomes", "jobs", "pods", "prompt", "completion"), SUMS)
def test_status_usage_is_the_sum(
    outcomes: list[SubtaskOutcome], jobs: dict[int, Any], pods: dict[int, Any], prompt: int, completion: int
) -> None:
    usage = status_of(world(agent_spec(), outcomes=outcomes, jobs=jobs, pods=pods))["usage"]
    assert (usage["promptTokens"], usage["completionTokens"]) == (prompt, completion)
    assert usage["totalTokens"] == prompt + completion


def test_no_agent_and_no_usage_means_no_usage_field() -> None:
    assert "usage" not in status_of(world())


def test_every_pod_of_a_subtask_counts() -> None:
    """A subtask retried inside its Job spent tokens in each attempt; replayed events count once."""
    children = ChildIndex()
    first = _pod("w-0-a", "Failed", json.dumps({"apwa": 1, "error": "429s", "usage": spent(100, 0, 9, 8)}))
    second = _pod("w-0-b", "Succeeded", envelope("ok", spent(40, 5, 1)))
    for body in (first, second, second):
        children.pod_event("MODIFIED", body, ())
    assert children.usage_of(0) == spent(140, 5, 10, 8)


def test_collect_takes_all_pods_usage() -> None:
    w = world(agent_spec(), jobs={0: done(0)})
    w.children.pod_event(
        "MODIFIED", _pod("w-0-a", "Failed", json.dumps({"apwa": 1, "error": "x", "usage": spent(3)})), ()
    )
    w.children.pod_event("MODIFIED", _pod("w-0-b", "Succeeded", envelope(0, spent(4))), ())
    assert status_of(w)["usage"]["promptTokens"] == 7


def test_usage_is_stored_with_the_outcome_and_survives_a_restart() -> None:
    outcomes = [used(0, 10, 1), used(1, 20, 2, ok=False), SubtaskOutcome(2, True, stored={"key": "k", "size": 1})]
    restored = [decode_outcome(o.index, json.loads(json.dumps(encode_outcome(o)))) for o in outcomes]
    assert [o.usage for o in restored] == [o.usage for o in outcomes]
    before, after = UsageTotals(), UsageTotals()
    for o, r in zip(outcomes, restored, strict=True):
        before.add(o.usage)
        after.add(r.usage)
    assert before == after


def test_the_reduce_pods_usage_is_added() -> None:
    w = world(agent_spec(2), outcomes=[used(0, 1), used(1, 2)])
    w.children.pod_event("MODIFIED", _pod("w-reduce-x", "Succeeded", envelope("r", spent(1000)), role="reduce"), ())
    assert status_of(w)["usage"]["promptTokens"] == 1003


# ---- the budget --------------------------------------------------------------------------------
BUDGET = [
    # budget, recorded usage (prompt tokens per subtask), active, phase, creates, completed
    pytest.param(100, [30, 30], 0, Phase.RUNNING, True, False, id="under-budget-runs-on"),
    pytest.param(100, [50, 50], 1, Phase.FAILED, False, False, id="spent-none-start-one-finishing"),
    pytest.param(100, [60, 50], 0, Phase.FAILED, False, True, id="spent-nothing-running-final"),
    pytest.param(100, [10] * 10, 0, Phase.SUCCEEDED, False, True, id="spent-exactly-as-the-last-finished"),
]


@pytest.mark.parametrize(("budget", "recorded", "active", "phase", "creates", "completed"), BUDGET)
def test_token_budget(
    budget: int, recorded: list[int], active: int, phase: Phase, creates: bool, completed: bool
) -> None:
    outcomes = [used(i, p) for i, p in enumerate(recorded)]
    jobs = {len(recorded) + k: running(len(recorded) + k) for k in range(active)}
    step = decide(world(agent_spec(max_total_tokens=budget), outcomes=outcomes, jobs=jobs), NOW)
    status = step.of(WriteStatus)[0].status
    assert status["phase"] == phase
    assert bool(step.of(CreateJobs)) is creates
    assert bool(status.get("completionTime")) is completed
    if phase == Phase.FAILED:
        ready = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert ready["reason"] == Reason.TOKEN_BUDGET_EXHAUSTED
        assert "spec.agent.maxTotalTokens" in ready["message"]


def test_estimated_cost() -> None:
    s = agent_spec(pricePer1kTokens={"prompt": 0.5, "completion": 1.5, "currency": "EUR"})
    usage = status_of(world(s, outcomes=[used(0, 2000, 1000)]))["usage"]
    assert usage["estimatedCost"] == "2.5000 EUR"


def test_usage_totals_merge_and_format() -> None:
    assert merged([spent(1, 2), spent(3, 4)]) == spent(4, 6, 2)
    assert merged([]) is None
    totals = UsageTotals()
    totals.add({**spent(1), "latency_seconds": 0.25})
    assert usage_status(totals)["modelSeconds"] == "0.250"


# ---- the way to the model ----------------------------------------------------------------------
EGRESS = [
    pytest.param(
        {},
        False,
        [{"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"protocol": "TCP", "port": 8000}]}],
        id="ip-url",
    ),
    pytest.param(
        {"url": "https://[fd00::5]/v1"},
        False,
        [{"to": [{"ipBlock": {"cidr": "fd00::5/128"}}], "ports": [{"protocol": "TCP", "port": 443}]}],
        id="ipv6-https-default-port",
    ),
    pytest.param(
        {
            "url": "https://api.openai.com/v1",
            "isolation": {"egress": "Custom", "egressRules": [{"cidr": "192.0.2.0/24"}]},
        },
        True,
        [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}],
        id="host-name-user-rules",
    ),
    pytest.param(
        {
            "url": "http://vllm.llm:8000/v1",
            "egress": [
                {"podSelector": {"matchLabels": {"app": "vllm"}}, "namespaceSelector": {}, "ports": [{"port": 8000}]}
            ],
        },
        True,
        [
            {
                "to": [{"podSelector": {"matchLabels": {"app": "vllm"}}, "namespaceSelector": {}}],
                "ports": [{"protocol": "TCP", "port": 8000}],
            }
        ],
        id="selectors",
    ),
]


@pytest.mark.parametrize(("agent", "dns", "rules"), EGRESS)
def test_egress_to_the_model(agent: dict[str, Any], dns: bool, rules: list[dict[str, Any]]) -> None:
    s = agent_spec(**agent)
    egress = render_network_policy(Owner("w", "ns"), s.isolation_or_default, s.store, s.agent)["spec"]["egress"]
    has_dns = any(r.get("ports", [{}])[0].get("port") == 53 for r in egress)
    assert has_dns is dns
    assert [r for r in egress if r.get("ports", [{}])[0].get("port") != 53] == rules


def test_a_host_name_the_pods_could_never_reach_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"agent\.url names the host 'vllm\.llm'.*agent\.egress"):
        agent_spec(url="http://vllm.llm:8000/v1")


# ---- an LLM reduce -----------------------------------------------------------------------------
REDUCE_ERRORS = [
    pytest.param(False, {"prompt": "merge"}, "results.reduce.agent needs spec.agent", id="no-spec-agent"),
    pytest.param(True, {"prompt": "merge {{ item }}"}, "unknown placeholder {{ item }}", id="item-in-reduce"),
    pytest.param(True, {"prompt": "m", "fanIn": 1}, "fanIn", id="fan-in-below-2"),
]


@pytest.mark.parametrize(("with_agent", "reduce", "error"), REDUCE_ERRORS)
def test_reduce_agent_declaration_errors(with_agent: bool, reduce: dict[str, Any], error: str) -> None:
    body: dict[str, Any] = {
        "decomposition": {"range": {"end": 2}},
        "templates": {"default": {"podTemplate": POD}},
        "results": {"reduce": {"agent": reduce}},
    }
    if with_agent:
        body["agent"] = AGENT
    with pytest.raises(ValidationError, match=error.replace("{", r"\{").replace("}", r"\}")):
        ParallelWorkloadSpec.model_validate(body)


def _pod(name: str, phase: str, message: str, role: str = "subtask") -> dict[str, Any]:
    labels = {"apwa.dev/role": role, **({"apwa.dev/index": "0"} if role == "subtask" else {})}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main"}]},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": "main",
                    "state": {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1, "message": message}},
                }
            ],
        },
    }
