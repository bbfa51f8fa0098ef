"""Dynamic planners against real HTTP servers on 127.0.0.1: a decomposer service and an
OpenAI-compatible server that answers scripted completions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apwa.api.models import ParallelWorkload, ParallelWorkloadSpec, PlannerSpec
from apwa.clients.planners import ask, make_planner, plan_offline
from apwa.planning.base import PlanningError
from apwa.planning.contract import ANSWER_SCHEMA, contract_schema
from apwa.planning.dynamic import ENV_API_KEY
from pydantic import ValidationError
from scripted_server import Reply, Seen, Server  # tests/ is on sys.path (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-test-5ecr3t-value-0123456789"


def completion(content: str | None, finish_reason: str = "stop", **message: Any) -> Reply:
    return Reply(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "test-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, **message},
                    "finish_reason": finish_reason,
                }
            ],
        }
    )


def answer(items: list[Any]) -> Reply:
    return completion(json.dumps({"subtasks": items}))


def planner(url: str, **fields: Any) -> PlannerSpec:
    return PlannerSpec.model_validate({"type": "HTTP", "url": url, "query": "split the work", **fields})


def openai(url: str, **fields: Any) -> PlannerSpec:
    return PlannerSpec.model_validate(
        {"type": "OpenAI", "url": url + "/v1", "model": "test-model", "query": "split the work", **fields}
    )


def run(
    spec: PlannerSpec,
    *,
    api_key: str | None = SECRET,
    key_source: str | None = "Secret 'llm' (key 'apiKey')",
    templates: tuple[str, ...] = ("default",),
    context: str | None = "ctx",
) -> list[Any]:
    client = make_planner(
        spec, api_key=api_key, key_source=key_source, namespace="ns1", templates=templates, backoff=0.01
    )
    return asyncio.run(client.plan(spec, workload="wl", context=context))


def fails(spec: PlannerSpec, **kwargs: Any) -> PlanningError:
    with pytest.raises(PlanningError) as e:
        run(spec, **kwargs)
    assert SECRET not in str(e.value)
    return e.value


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test also checks that the key never reaches a log line (ours or httpx's)."""
    caplog.set_level(logging.DEBUG)
    yield
    assert SECRET not in caplog.text


# ---- HTTP decomposer -----------------------------------------------------------------------------
def test_http_success_sends_the_contract() -> None:
    items = ["a", 2, {"path": "x.py"}, [1, 2], None]
    with Server([Reply(body={"subtasks": items, "note": "extra fields are ignored"})]) as s:
        got = run(planner(s.url + "/decompose", maxSubtasks=10), templates=("big", "default"))
    assert got == items
    [req] = s.requests
    assert req.path == "/decompose"
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    assert req.headers["content-type"] == "application/json"
    assert req.body == {
        "workload": {"name": "wl", "namespace": "ns1"},
        "query": "split the work",
        "context": "ctx",
        "maxSubtasks": 10,
        "templates": ["big", "default"],
    }
    # The request is what the published contract describes.
    request_schema = contract_schema()["$defs"]["PlanRequest"]
    assert set(req.body) == set(request_schema["required"]) == set(request_schema["properties"])


def test_http_without_a_key_sends_no_authorization() -> None:
    with Server([Reply(body={"subtasks": ["a"]})]) as s:
        assert run(planner(s.url), api_key=None, key_source=None, context=None) == ["a"]
    assert "authorization" not in s.requests[0].headers
    assert s.requests[0].body["context"] is None


def test_http_500s_then_success() -> None:
    script = [Reply(500, {"error": "boom"}), Reply(503, {"error": "busy"}), Reply(body={"subtasks": ["ok"]})]
    with Server(script) as s:
        assert run(planner(s.url, retries=2)) == ["ok"]
    assert len(s.requests) == 3


def test_http_500s_exhaust_the_retries() -> None:
    with Server([Reply(500, {"error": "database down"})]) as s:
        e = fails(planner(s.url, retries=1))
    assert len(s.requests) == 2
    assert "returned HTTP 500 (database down) after 2 attempts" in e.message
    assert "check its logs" in e.message


def test_http_429_honours_retry_after() -> None:
    with Server([Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"}), Reply(body={"subtasks": [1]})]) as s:
        started = time.monotonic()
        assert run(planner(s.url, retries=1)) == [1]
        assert time.monotonic() - started >= 0.9
    assert len(s.requests) == 2


def test_http_timeout() -> None:
    with Server([Reply(body={"subtasks": ["late"]}, delay=3)]) as s:
        started = time.monotonic()
        e = fails(planner(s.url, timeoutSeconds=1, retries=0))
        assert time.monotonic() - started < 2.5
    assert e.field == "spec.decomposition.planner.timeoutSeconds"
    assert "did not answer within timeoutSeconds (1s) after 1 attempt" in e.message
    assert "raise spec.decomposition.planner.timeoutSeconds" in e.message


def test_http_timeout_then_success() -> None:
    with Server([Reply(body={"subtasks": ["late"]}, delay=3), Reply(body={"subtasks": ["fast"]})]) as s:
        assert run(planner(s.url, timeoutSeconds=1, retries=1)) == ["fast"]
    assert len(s.requests) == 2


def test_http_401_is_actionable_and_secret_free() -> None:
    body = {"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request_error"}}
    with Server([Reply(401, body)]) as s:
        e = fails(planner(s.url, retries=3))
    assert len(s.requests) == 1  # not retried: the same key fails the same way
    assert e.field == "spec.decomposition.planner.apiKeySecretRef"
    assert "returned HTTP 401 (Incorrect API key provided: ***)" in e.message
    assert "check the API key in Secret 'llm' (key 'apiKey')" in e.message


def test_http_401_without_a_key_says_to_configure_one() -> None:
    with Server([Reply(401, {"message": "unauthorized"})]) as s:
        e = fails(planner(s.url), api_key=None, key_source=None)
    assert "set spec.decomposition.planner.apiKeySecretRef" in e.message


def test_http_404_names_the_url() -> None:
    with Server([Reply(404, "<html>not found</html>")]) as s:
        e = fails(planner(s.url + "/nope"))
    assert e.field == "spec.decomposition.planner.url"
    assert f"at {s.url}/nope returned HTTP 404" in e.message


def test_http_answer_outside_the_contract() -> None:
    for body, expected in [
        ({"items": ["a"]}, "subtasks: Field required"),
        ({"subtasks": []}, "subtasks: List should have at least 1 item"),
        ({"subtasks": "a, b"}, "subtasks: Input should be a valid list"),
    ]:
        with Server([Reply(body=body)]) as s:
            e = fails(planner(s.url))
        assert "answered outside the contract (docs/planner-contract.schema.json)" in e.message
        assert expected in e.message


def test_http_html_instead_of_json() -> None:
    with Server([Reply(200, "<html>login page</html>")]) as s:
        e = fails(planner(s.url))
    assert e.field == "spec.decomposition.planner.url"
    assert "answered with text/html, not JSON" in e.message


def test_http_more_subtasks_than_allowed() -> None:
    with Server([Reply(body={"subtasks": list(range(5))})]) as s:
        e = fails(planner(s.url, maxSubtasks=3))
    assert e.field == "spec.decomposition.planner.maxSubtasks"
    assert "5 subtasks is more than the maximum of 3" in e.message


def test_http_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    e = fails(planner(f"http://user:pw@127.0.0.1:{port}/plan?token=abc", retries=1))
    assert e.field == "spec.decomposition.planner.url"
    assert f"at http://127.0.0.1:{port}/plan could not be reached (ConnectError" in e.message
    assert "pw" not in e.message and "token" not in e.message  # credentials in URLs are not shown


# ---- OpenAI-compatible ---------------------------------------------------------------------------
def test_openai_success() -> None:
    with Server([answer(["Explain Pods", {"topic": "Jobs", "template": "big"}])]) as s:
        got = run(openai(s.url, maxSubtasks=7), templates=("big", "default"))
    assert got == ["Explain Pods", {"topic": "Jobs", "template": "big"}]
    [req] = s.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    assert req.body["model"] == "test-model"
    assert req.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "subtasks", "strict": False, "schema": ANSWER_SCHEMA},
    }
    system, user = req.body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    for phrase in ["independent subtasks", "self-contained", "at most 7 subtasks", '"big"', '{"subtasks": [...]}']:
        assert phrase in system["content"]
    assert "split the work" in user["content"] and "ctx" in user["content"]


def test_openai_malformed_json_is_repaired() -> None:
    with Server([completion('Sure! {"subtasks": ["a", "b"'), answer(["a", "b"])]) as s:
        assert run(openai(s.url)) == ["a", "b"]
    assert len(s.requests) == 2
    messages = s.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == 'Sure! {"subtasks": ["a", "b"'
    assert "is not valid JSON" in messages[3]["content"]


def test_openai_schema_invalid_output_fails_after_the_repairs() -> None:
    with Server([completion(json.dumps({"tasks": ["a"]}))]) as s:
        e = fails(openai(s.url, repairAttempts=1))
    assert len(s.requests) == 2
    assert e.field == "spec.decomposition.planner"
    assert "gave no usable plan after 1 repair attempt" in e.message
    assert "subtasks: Field required" in e.message
    assert "raise spec.decomposition.planner.repairAttempts" in e.message


def test_openai_wrong_item_types_are_named() -> None:
    with Server([answer(["a", 3]), answer(["a", ""]), answer(["a", "b"])]) as s:
        assert run(openai(s.url)) == ["a", "b"]
    repairs = [r.body["messages"][-1]["content"] for r in s.requests[1:]]
    assert "subtask 1 is a number; each subtask must be a string or a JSON object" in repairs[0]
    assert "subtask 1 is an empty string" in repairs[1]


def test_openai_too_many_subtasks_repaired_then_refused() -> None:
    with Server([answer(list("abcde")), answer(list("abc"))]) as s:
        assert run(openai(s.url, maxSubtasks=3)) == list("abc")
    assert "5 subtasks is more than the maximum of 3" in s.requests[1].body["messages"][-1]["content"]

    with Server([answer(list("abcde"))]) as s:
        e = fails(openai(s.url, maxSubtasks=3, repairAttempts=2))
    assert len(s.requests) == 3
    assert e.field == "spec.decomposition.planner.maxSubtasks"
    assert "raise spec.decomposition.planner.maxSubtasks" in e.message


def test_openai_unknown_template_goes_back_to_the_model() -> None:
    spec = ParallelWorkloadSpec.model_validate(
        {
            "decomposition": {"planner": openai("http://x").dump()},
            "templates": {"default": {"podTemplate": {"spec": {"containers": [{"name": "c"}]}}}},
        }
    )
    with Server([answer([{"template": "gpu", "t": 1}]), answer([{"t": 1}])]) as s:
        spec.decomposition.planner.url = s.url + "/v1"  # type: ignore[union-attr]
        items = asyncio.run(
            ask(spec, workload="wl", namespace=None, context=None, api_key=None, key_source=None, backoff=0.01)
        )
    assert items == [{"t": 1}]
    assert "names template 'gpu', which is not in spec.templates" in s.requests[1].body["messages"][-1]["content"]


def test_openai_response_format_fallback() -> None:
    def script(seen: Seen) -> Reply:
        fmt = seen.body.get("response_format", {}).get("type")
        if fmt:
            return Reply(400, {"error": {"message": f"response_format type {fmt} is not supported"}})
        return completion('<think>plan it</think>\n```json\n{"subtasks": ["x"]}\n```')

    with Server(script) as s:
        assert run(openai(s.url)) == ["x"]
    formats = [r.body.get("response_format", {}).get("type") for r in s.requests]
    assert formats == ["json_schema", "json_object", None]


def test_openai_fallback_is_remembered_for_repairs() -> None:
    def script(seen: Seen) -> Reply:
        if seen.body.get("response_format", {}).get("type") == "json_schema":
            return Reply(400, {"error": {"message": "Unknown parameter: 'response_format.json_schema'"}})
        return completion("[1, 2]") if len(seen.body["messages"]) == 2 else answer(["one"])

    with Server(script) as s:
        assert run(openai(s.url)) == ["one"]
    formats = [r.body.get("response_format", {}).get("type") for r in s.requests]
    assert formats == ["json_schema", "json_object", "json_object"]


def test_openai_other_400_is_not_a_fallback() -> None:
    with Server([Reply(400, {"error": {"message": "The model `nope` does not exist"}})]) as s:
        e = fails(openai(s.url))
    assert len(s.requests) == 1
    assert "returned HTTP 400 (The model `nope` does not exist): check spec.decomposition.planner.model" in e.message


def test_openai_500s_then_success() -> None:
    with Server([Reply(502, "bad gateway"), Reply(500, {"error": {"message": "oops"}}), answer(["a"])]) as s:
        assert run(openai(s.url, retries=3)) == ["a"]
    assert len(s.requests) == 3


def test_openai_401_is_actionable_and_secret_free() -> None:
    body = {"error": {"message": f"Incorrect API key provided: {SECRET}. You can find your API key at ..."}}
    with Server([Reply(401, body)]) as s:
        e = fails(openai(s.url))
    assert e.field == "spec.decomposition.planner.apiKeySecretRef"
    assert e.message.startswith(f"the OpenAI planner at {s.url}/v1/chat/completions returned HTTP 401")
    assert "check the API key in Secret 'llm' (key 'apiKey')" in e.message
    assert "***" in e.message


def test_openai_404_hints_at_the_base_url() -> None:
    with Server([Reply(404, {"detail": "Not Found"})]) as s:
        e = fails(openai(s.url))
    assert "the base URL, usually ending in /v1" in e.message


def test_openai_timeout() -> None:
    with Server([Reply(body=answer(["slow"]).body, delay=3)]) as s:
        e = fails(openai(s.url, timeoutSeconds=1, retries=1))
    assert len(s.requests) == 2
    assert "did not answer within timeoutSeconds (1s) after 2 attempts" in e.message


def test_openai_cut_off_answer_says_so() -> None:
    with Server([completion('{"subtasks": ["a", "b', finish_reason="length")]) as s:
        e = fails(openai(s.url, repairAttempts=0))
    assert "(repairAttempts: 0)" in e.message
    assert "cut off at the output limit" in e.message


def test_openai_refusal() -> None:
    with Server([completion(None, refusal="I can't help with that.")]) as s:
        e = fails(openai(s.url))
    assert e.field == "spec.decomposition.planner.query"
    assert "the model refused to plan: I can't help with that." in e.message


def test_openai_not_a_completion() -> None:
    with Server([Reply(body={"subtasks": ["a"]})]) as s:
        e = fails(openai(s.url))
    assert "did not answer a chat completion" in e.message


# ---- the spec, the contract, offline planning ----------------------------------------------------
def test_planner_spec_rules() -> None:
    with pytest.raises(ValidationError, match=r"planner\.model is required for type OpenAI"):
        PlannerSpec.model_validate({"type": "OpenAI", "url": "http://x/v1", "query": "q"})
    with pytest.raises(ValidationError, match="not both"):
        PlannerSpec.model_validate(
            {
                "type": "HTTP",
                "url": "http://x",
                "query": "q",
                "context": "c",
                "contextConfigMapRef": {"name": "a", "key": "b"},
            }
        )
    with pytest.raises(ValidationError, match="should match pattern"):
        PlannerSpec.model_validate({"type": "HTTP", "url": "x.example.com", "query": "q"})
    p = PlannerSpec.model_validate({"type": "HTTP", "url": "https://x", "query": "q"})
    assert (p.max_subtasks, p.timeout_seconds, p.retries, p.repair_attempts) == (100, 60, 3, 2)


def test_checked_in_contract_schema_matches_the_code() -> None:
    text = (ROOT / "docs" / "planner-contract.schema.json").read_text()
    assert json.loads(text) == contract_schema(), "regenerate docs/planner-contract.schema.json from contract_schema()"
    assert text == json.dumps(contract_schema(), indent=2) + "\n"


def workload_doc(url: str, **planner_fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apwa.dev/v1alpha1",
        "kind": "ParallelWorkload",
        "metadata": {"name": "offline", "namespace": "team"},
        "spec": {
            "decomposition": {"planner": {"type": "HTTP", "url": url, "query": "q", **planner_fields}},
            "templates": {"default": {"podTemplate": {"spec": {"containers": [{"name": "c"}]}}}},
        },
    }


def test_plan_offline_reads_the_env_key_and_the_file_config_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_API_KEY, SECRET + "\n")
    with Server([Reply(body={"subtasks": ["p", "q"]})]) as s:
        w = ParallelWorkload.model_validate(
            workload_doc(
                s.url,
                apiKeySecretRef={"name": "k", "key": "v"},
                contextConfigMapRef={"name": "ctx", "key": "text"},
            )
        )
        assert plan_offline(w, {"ctx": {"text": "the context"}}) == ["p", "q"]
        with pytest.raises(PlanningError, match="ConfigMap 'ctx' is not in the file"):
            plan_offline(w)
    [req] = s.requests
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    assert req.body["context"] == "the context"
    assert req.body["workload"] == {"name": "offline", "namespace": "team"}


def test_plan_offline_without_the_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    w = ParallelWorkload.model_validate(workload_doc("http://127.0.0.1:9/", apiKeySecretRef={"name": "k", "key": "v"}))
    with pytest.raises(PlanningError) as e:
        plan_offline(w)
    assert e.value.field == "spec.decomposition.planner.apiKeySecretRef"
    assert f"export {ENV_API_KEY}" in e.value.message and "Secret 'k'" in e.value.message


# ---- the example, through the CLI ----------------------------------------------------------------
def fake_llm(seen: Seen) -> Reply:
    """The planner's request gets a plan; each worker's request gets an answer to its subtask."""
    system = next((m["content"] for m in seen.body["messages"] if m["role"] == "system"), "")
    if "independent subtasks" in system:
        return answer([f"Explain {kind} to a beginner in one paragraph." for kind in ("Pod", "Job", "Service")])
    return completion("An answer to: " + seen.body["messages"][-1]["content"])


def test_example_plans_and_runs_locally(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "llm-planned.yaml").read_text()
    url = "http://vllm.llm.svc.cluster.local:8000/v1"
    assert text.count(url) >= 2  # the planner and the worker use the same server
    with Server(fake_llm) as s:
        path = tmp_path / "llm.yaml"
        path.write_text(text.replace(url, s.url + "/v1"))
        env = {**os.environ, ENV_API_KEY: SECRET, "APWA_AGENT_API_KEY": SECRET}
        cmd = [sys.executable, "-m", "apwa.cli"]
        planned = subprocess.run(
            [*cmd, "plan", str(path), "-o", "json"], capture_output=True, text=True, env=env, timeout=60
        )
        assert planned.returncode == 0, planned.stderr
        rows = json.loads(planned.stdout)
        assert [r["item"] for r in rows] == [
            f"Explain {k} to a beginner in one paragraph." for k in ("Pod", "Job", "Service")
        ]

        ran = subprocess.run(
            [*cmd, "run", "--local", "-q", str(path)], capture_output=True, text=True, env=env, timeout=120
        )
        assert ran.returncode == 0, ran.stderr + ran.stdout
        status = yaml.safe_load(ran.stdout)["status"]
        assert status["phase"] == "Succeeded" and status["counts"]["succeeded"] == 3
        assert SECRET not in planned.stderr + ran.stderr + ran.stdout
    planner_calls = [r for r in s.requests if "independent subtasks" in r.body["messages"][0]["content"]]
    assert len(planner_calls) == 2  # once for `plan`, once for `run --local`
    assert len(s.requests) == 2 + 3
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in s.requests)


def test_http_redirect_is_not_followed() -> None:
    with Server([Reply(302, {"moved": True}, headers={"Location": "http://user:pw@elsewhere.example/plan?k=1"})]) as s:
        e = fails(planner(s.url))
    assert len(s.requests) == 1  # the key is not resent to wherever the redirect points
    assert e.field == "spec.decomposition.planner.url"
    assert "returned HTTP 302" in e.message and "to http://elsewhere.example/plan" in e.message
    assert "pw" not in e.message


# ---- the stored plan (operator side, pure parts) --------------------------------------------------
def test_stored_plan_round_trip_large_and_small() -> None:
    import asyncio
    from types import SimpleNamespace

    from apwa.controller.dynamic import FIELD, PLAN_KEY, _items_of, _plan_body
    from apwa.rendering import Owner

    runner: Any = SimpleNamespace(owner=Owner("wl", "ns", "uid-1", {"team": "a"}), uid="uid-1")
    for n in (3, 20_000):  # the large one is over the compression threshold
        items = [{"i": i, "task": f"review file {i} for unchecked errors"} for i in range(n)]
        payload = json.dumps({"subtasks": items}).encode()
        body = _plan_body(runner, "wl-plan", payload)
        section = "binaryData" if n > 3 else "data"
        assert list(body[section]) == [PLAN_KEY]
        assert body["metadata"]["labels"]["apwa.dev/role"] == "plan"
        assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert asyncio.run(_items_of(runner, body, FIELD, None)) == items

    other: Any = SimpleNamespace(owner=runner.owner, uid="uid-2")
    with pytest.raises(PlanningError, match="not this workload's plan"):
        asyncio.run(_items_of(other, body, FIELD, None))
    broken = {**body, "binaryData": {PLAN_KEY: "bm90IGpzb24="}}
    with pytest.raises(PlanningError, match="unreadable"):
        asyncio.run(_items_of(runner, broken, FIELD, None))
