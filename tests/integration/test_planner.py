"""Dynamic plans through the real operator: planner servers run in this process on 127.0.0.1 and
the operator subprocess calls them; kwok finishes the pods."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from apwa.controller.store import read_payload
from helpers import wait_for
from kubernetes import client
from operator_proc import OperatorProcess
from scripted_server import Reply, Seen, Server
from workloads import Workloads, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")

SECRET = "sk-it-5ecr3t-0123456789abcdef"
ITEMS: list[Any] = ["alpha", {"template": "big", "n": 2}, "gamma", {"path": "x/y.py"}]


@pytest.fixture
def planners() -> Iterator[Callable[[Callable[[Seen], Reply]], Server]]:
    """Start planner services whose answers the test scripts; the operator subprocess calls them."""
    started: list[Server] = []

    def start(reply: Callable[[Seen], Reply]) -> Server:
        started.append(Server(reply).__enter__())
        return started[-1]

    yield start
    for p in started:
        p.__exit__()


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


def completion(items: list[Any]) -> Reply:
    content = json.dumps({"subtasks": items})
    return Reply(body={"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


def templates() -> dict[str, Any]:
    env = {"KWOK_MESSAGE": "{{ item }}"}
    return {"default": {"podTemplate": pod_template(env)}, "big": {"podTemplate": pod_template(env)}}


def create_secret(w: Workloads, name: str = "llm") -> None:
    w.core.create_namespaced_secret(
        w.ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data={"apiKey": SECRET})
    )


def plan_config_map(w: Workloads, name: str) -> client.V1ConfigMap | None:
    try:
        return w.core.read_namespaced_config_map(f"{name}-plan", w.ns)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def assert_results(w: Workloads, name: str, items: list[Any]) -> None:
    results = w.results(name)
    assert sorted(results) == list(range(len(items)))
    for i, item in enumerate(items):
        assert results[i] == {"ok": True, "result": item}


def assert_no_secret_anywhere(w: Workloads, name: str, operator: OperatorProcess) -> None:
    assert SECRET not in json.dumps(w.get(name))
    events = w.core.list_namespaced_event(w.ns).items
    assert SECRET not in " ".join(e.message or "" for e in events)
    assert SECRET not in operator.log_path.read_text()


def test_openai_planned_workload_runs_end_to_end(
    w: Workloads, planners: Callable[..., Server], operator: OperatorProcess
) -> None:
    # A slow model: the workload shows phase Planning meanwhile.
    llm = planners(lambda seen: Reply(body=completion(ITEMS).body, delay=3))
    create_secret(w)
    w.core.create_namespaced_config_map(
        w.ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="ctx"), data={"text": "files: x/y.py"})
    )
    planner = {
        "type": "OpenAI",
        "url": llm.url + "/v1",
        "model": "test-model",
        "apiKeySecretRef": {"name": "llm", "key": "apiKey"},
        "query": "review the files",
        "contextConfigMapRef": {"name": "ctx", "key": "text"},
    }
    w.create(workload("llm", {"planner": planner}, templates=templates(), parallelism=2))
    planning = w.wait_phase("llm", "Planning", timeout=60)
    assert "asking the OpenAI planner (model 'test-model' at " in planning["status"]["message"]

    done = w.wait_condition("llm", "Complete")
    status = done["status"]
    assert status["phase"] == "Succeeded"
    assert status["counts"] == {
        "total": 4,
        "pending": 0,
        "active": 0,
        "succeeded": 4,
        "failed": 0,
        "awaitingAdmission": 0,
    }
    assert_results(w, "llm", ITEMS)
    jobs = {j.metadata.name: j for j in w.jobs("llm")}
    assert sorted(jobs) == [f"llm-{i}" for i in range(4)]
    assert jobs["llm-1"].metadata.annotations["apwa.dev/template"] == "big"

    # The plan is stored, owned by the workload, and the model was asked exactly once.
    cm = plan_config_map(w, "llm")
    assert cm is not None
    assert cm.metadata.labels["apwa.dev/role"] == "plan"
    assert cm.metadata.owner_references[0].uid == done["metadata"]["uid"]
    stored = json.loads(cm.data["plan.json"])
    assert stored["subtasks"] == ITEMS
    assert stored["planner"] == {"type": "OpenAI", "url": llm.url + "/v1", "model": "test-model"}
    [req] = llm.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    assert req.body["model"] == "test-model"
    assert "files: x/y.py" in req.body["messages"][1]["content"]
    assert_no_secret_anywhere(w, "llm", operator)


def test_planned_workload_survives_a_restart_before_the_first_job(
    w: Workloads, planners: Callable[..., Server], operator: OperatorProcess
) -> None:
    decomposer = planners(lambda seen: Reply(body={"subtasks": ITEMS}))
    planner = {"type": "HTTP", "url": decomposer.url + "/plan", "query": "split it", "context": "inline"}
    # Suspended: the plan is made and stored, but no Job starts, which opens the window.
    w.create(workload("restart", {"planner": planner}, templates=templates(), parallelism=2, suspend=True))
    cm = wait_for(lambda: plan_config_map(w, "restart"), 60, "the plan ConfigMap")
    operator.kill()
    assert w.jobs("restart") == []
    operator.start()

    w.patch("restart", {"suspend": False})
    done = w.wait_condition("restart", "Complete")
    assert done["status"]["counts"]["succeeded"] == len(ITEMS)
    assert_results(w, "restart", ITEMS)
    assert len(decomposer.requests) == 1, "planned twice"
    # The plan that was stored before the restart is the plan that ran, untouched.
    after = plan_config_map(w, "restart")
    assert after is not None and after.metadata.resource_version == cm.metadata.resource_version
    [req] = decomposer.requests
    assert req.body == {
        "workload": {"name": "restart", "namespace": w.ns},
        "query": "split it",
        "context": "inline",
        "maxSubtasks": 100,
        "templates": ["big", "default"],
    }
    raw = client.ApiClient().sanitize_for_serialization(after)
    assert json.loads(read_payload({"data": {"results.json": raw["data"]["plan.json"]}}))["subtasks"] == ITEMS


def test_failing_planner_stalls_then_recovers(
    w: Workloads, planners: Callable[..., Server], operator: OperatorProcess
) -> None:
    healthy = threading.Event()

    def reply(seen: Seen) -> Reply:
        if healthy.is_set():
            return completion(["one", "two"])
        return Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})

    llm = planners(reply)
    create_secret(w)
    planner = {
        "type": "OpenAI",
        "url": llm.url + "/v1",
        "model": "m",
        "apiKeySecretRef": {"name": "llm", "key": "apiKey"},
        "query": "q",
        "retries": 0,
    }
    w.create(workload("flaky", {"planner": planner}, templates=templates()))
    stalled = w.wait_condition("flaky", "Stalled", timeout=60)
    cond = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
    assert cond["reason"] == "PlanningFailed"
    assert "returned HTTP 401" in cond["message"]
    assert "check the API key in Secret 'llm' (key 'apiKey')" in cond["message"]
    assert plan_config_map(w, "flaky") is None  # nothing is stored from a failed call
    assert_no_secret_anywhere(w, "flaky", operator)

    healthy.set()  # the key was fixed: the operator's retry (with backoff) now succeeds
    done = w.wait_condition("flaky", "Complete", timeout=120)
    assert done["status"]["counts"]["succeeded"] == 2
    assert_results(w, "flaky", ["one", "two"])
    assert len(llm.requests) >= 2
    assert (w.condition("flaky", "Stalled") or {})["status"] == "False"


def test_missing_secret_stalls_with_an_actionable_message(w: Workloads) -> None:
    planner = {
        "type": "HTTP",
        "url": "http://127.0.0.1:9/plan",
        "query": "q",
        "apiKeySecretRef": {"name": "nope", "key": "token"},
    }
    w.create(workload("nosecret", {"planner": planner}, templates=templates()))
    stalled = w.wait_condition("nosecret", "Stalled", timeout=60)
    cond = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
    assert cond["reason"] == "PlanningFailed"
    assert f"Secret 'nope' not found in namespace '{w.ns}'" in cond["message"]
    assert stalled["status"]["phase"] == "Pending"
