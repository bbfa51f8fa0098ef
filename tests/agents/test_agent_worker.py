"""The agent worker against the scripted model server (apwa.modelstub) running as a real HTTP
server on 127.0.0.1: retries, repairs, limits, usage and how results leave the pod."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from apwa import agent
from apwa.api.models import AgentSpec
from apwa.modelstub import ModelStub
from apwa.results.protocol import FINAL_EXIT_CODE, decode_failure, decode_result, decode_usage

SECRET = "sk-test-0123456789"
FINDINGS = {
    "type": "object",
    "required": ["findings"],
    "properties": {
        "findings": {
            "type": "array",
            "items": {"type": "object", "required": ["line"], "properties": {"line": {"type": "integer"}}},
        }
    },
}
CONTEXT = {"item": {"path": "a.py"}, "index": 3, "count": 10, "workload": "review"}


def spec(url: str, **fields: Any) -> AgentSpec:
    return AgentSpec.model_validate({"url": url, "model": "m", "prompt": "Review {{ item.path }}", **fields})


def ask(s: AgentSpec, **kwargs: Any) -> agent.Answer:
    return asyncio.run(agent.answer(s, CONTEXT, backoff=0.01, **kwargs))


def fails(s: AgentSpec, **kwargs: Any) -> agent.AgentError:
    with pytest.raises(agent.AgentError) as e:
        ask(s, **kwargs)
    return e.value


def words(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in body["messages"])


def test_prompt_is_filled_from_the_item_and_the_schema_is_asked_for() -> None:
    with ModelStub() as stub:
        got = ask(spec(stub.url, outputSchema=FINDINGS, systemPrompt="Be brief."))
    assert got.value == {"findings": [{"line": 0}]}
    body = stub.requests[0].body
    assert body["messages"][-1] == {"role": "user", "content": "Review a.py"}
    assert body["messages"][0]["content"].startswith("Be brief.\n\nAnswer with only a JSON value")
    assert body["response_format"]["json_schema"]["schema"] == FINDINGS


def test_free_text_sends_no_response_format_and_passes_sampling_options() -> None:
    with ModelStub() as stub:
        got = ask(spec(stub.url, temperature=0.2, maxTokens=50))
    assert got.value == "stub answer: Review a.py"
    body = stub.requests[0].body
    assert "response_format" not in body
    assert (body["temperature"], body["max_tokens"]) == (0.2, 50)


def test_429_waits_as_long_as_retry_after_says() -> None:
    with ModelStub([{"status": 429, "retryAfter": 1}]) as stub:
        got = ask(spec(stub.url))
    first, second = stub.requests
    assert second.at - first.at >= 1.0  # the backoff alone is 0.01 s here
    assert (got.usage.requests, got.usage.retries) == (2, 1)


def test_500s_are_retried() -> None:
    with ModelStub([{"status": 500}, {"status": 503}]) as stub:
        got = ask(spec(stub.url))
    assert got.value.startswith("stub answer")
    assert (got.usage.requests, got.usage.retries) == (3, 2)


def test_500s_beyond_retries_fail_with_what_to_do() -> None:
    with ModelStub([{"status": 500}] * 3) as stub:
        e = fails(spec(stub.url, retries=2))
    assert len(stub.requests) == 3
    assert "returned HTTP 500 (stub fault: HTTP 500) after 3 attempts" in e.message
    assert "check its logs" in e.message
    assert not e.final


def test_malformed_json_is_repaired() -> None:
    with ModelStub([{"content": "Sure! Here it is: {findings"}]) as stub:
        got = ask(spec(stub.url, outputSchema=FINDINGS))
    assert got.value == {"findings": [{"line": 0}]}
    repair = stub.requests[1].body["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! Here it is: {findings"}
    assert "it is not valid JSON" in repair[-1]["content"]


def test_schema_invalid_answers_fail_after_the_bounded_repairs() -> None:
    bad = {"content": json.dumps({"findings": [{"line": "twelve"}]})}
    with ModelStub([bad] * 3) as stub:
        e = fails(spec(stub.url, outputSchema=FINDINGS, repairAttempts=2))
    assert len(stub.requests) == 3  # the answer, then two repairs
    assert "gave no usable answer after 2 repair attempts" in e.message
    assert "$.findings[0].line is a string; it must be integer" in e.message
    assert "raise spec.agent.repairAttempts" in e.message
    assert e.usage is not None and e.usage.requests == 3


def test_a_request_that_takes_too_long_times_out() -> None:
    with ModelStub([{"hang": True}]) as stub:
        started = time.monotonic()
        e = fails(spec(stub.url, timeoutSeconds=1, retries=0))
        assert time.monotonic() - started < 5
    assert "did not answer within timeoutSeconds (1s)" in e.message
    assert "raise spec.agent.timeoutSeconds" in e.message


def test_the_deadline_bounds_retries_and_waits() -> None:
    with ModelStub([{"status": 429, "retryAfter": 30}]) as stub:
        started = time.monotonic()
        e = fails(spec(stub.url, deadlineSeconds=2, retries=5))
        assert time.monotonic() - started < 5  # it does not sleep 30 s into a 2 s deadline
    assert len(stub.requests) == 1
    assert "the deadline came first" in e.message


def test_a_slow_answer_is_cut_by_the_deadline() -> None:
    with ModelStub([{"hang": True}]) as stub:
        e = fails(spec(stub.url, deadlineSeconds=1, timeoutSeconds=60))
    assert "did not answer before the deadline" in e.message
    assert "spec.agent.deadlineSeconds" in e.message


def test_a_cut_free_text_answer_is_an_error_not_a_result() -> None:
    with ModelStub() as stub:
        stub_reply = stub.completion  # finish_reason "length", as a server at max_tokens says

        def cut(body: dict[str, Any], fault: dict[str, Any]) -> dict[str, Any]:
            out = stub_reply(body, fault)
            out["choices"][0]["finish_reason"] = "length"
            return out

        stub.completion = cut  # type: ignore[method-assign]
        e = fails(spec(stub.url))
    assert e.message == (
        "spec.agent: the answer was cut off at the output limit (finish_reason length): raise spec.agent.maxTokens"
    )


@pytest.mark.parametrize(
    ("status", "final"),
    [
        pytest.param(400, True, id="400 bad request: final"),
        pytest.param(404, True, id="404 wrong url: final"),
        pytest.param(503, False, id="503 after retries: the Job may retry"),
    ],
)
def test_which_server_errors_are_final(status: int, final: bool) -> None:
    with ModelStub([{"status": status}] * 2) as stub:
        e = fails(spec(stub.url, retries=1))
    assert e.final is final
    assert f"returned HTTP {status}" in e.message


def test_usage_is_counted_exactly() -> None:
    with ModelStub([{"status": 500}, {"content": "not json at all"}]) as stub:
        got = ask(spec(stub.url, outputSchema=FINDINGS))
    answered = [r.body for r in stub.requests[1:]]  # the 500 reported no usage
    assert got.usage.prompt_tokens == sum(words(b) for b in answered)
    assert got.usage.completion_tokens == len("not json at all".split()) + len('{"findings": [{"line": 0}]}'.split())
    assert (got.usage.requests, got.usage.retries) == (3, 1)
    assert got.usage.latency_seconds > 0


def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s: AgentSpec, **env: str) -> tuple[int, str]:
    """The apwa-agent command with the environment a subtask pod gets: (exit code, message)."""
    result = tmp_path / "termination-log"
    values = {
        "APWA_AGENT": json.dumps(s.dump()),
        "APWA_ITEM": json.dumps(CONTEXT["item"]),
        "APWA_INDEX": "3",
        "APWA_COUNT": "10",
        "APWA_RESULT_PATH": str(result),
        **env,
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    code = 0
    try:
        agent.run(backoff=0.01)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, result.read_text()


def test_the_command_emits_the_answer_with_usage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with ModelStub() as stub:
        code, message = run(monkeypatch, tmp_path, spec(stub.url, outputSchema=FINDINGS))
    assert code == 0
    assert decode_result(message) == {"findings": [{"line": 0}]}
    usage = decode_usage(message)
    assert usage is not None
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["requests"]) == (
        words(stub.requests[0].body),
        len('{"findings": [{"line": 0}]}'.split()),
        1,
    )


def test_401_names_the_secret_and_never_shows_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ref = {"name": "llm-key", "key": "apiKey"}
    with ModelStub([{"status": 401}]) as stub:
        code, message = run(monkeypatch, tmp_path, spec(stub.url, apiKeySecretRef=ref), APWA_AGENT_API_KEY=SECRET)
    assert stub.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert len(stub.requests) == 1  # the same key fails the same way
    text, final = decode_failure(message)
    assert code == FINAL_EXIT_CODE and final
    assert "spec.agent.apiKeySecretRef" in text
    assert "check the API key in Secret 'llm-key' (key 'apiKey')" in text
    assert SECRET not in message
    usage = decode_usage(message)  # a failure reports what it spent too
    assert usage is not None
    assert (usage["prompt_tokens"], usage["requests"], usage["retries"]) == (0, 1, 0)


def test_a_declared_key_that_did_not_arrive_is_final(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("APWA_AGENT_API_KEY", raising=False)
    s = spec("http://127.0.0.1:9/v1", apiKeySecretRef={"name": "llm-key", "key": "apiKey"})
    code, message = run(monkeypatch, tmp_path, s)
    text, final = decode_failure(message)
    assert code == FINAL_EXIT_CODE and final
    assert "Secret 'llm-key' (key 'apiKey') did not arrive as $APWA_AGENT_API_KEY" in text


def test_a_large_answer_goes_to_the_output_file_whole(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    output = tmp_path / "output"
    with ModelStub([{"size": 100_000}]) as stub:
        code, message = run(monkeypatch, tmp_path, spec(stub.url), APWA_OUTPUT_PATH=str(output))
    assert code == 0
    answer = json.loads(output.read_text())
    assert len(answer) == 100_000 and answer.startswith("stub answer: Review a.py")
    usage = decode_usage(message)  # the message carries what was spent; the store, the answer
    assert usage is not None and usage["completion_tokens"] == 4


def test_a_large_answer_without_a_store_fails_rather_than_being_cut(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("APWA_OUTPUT_PATH", raising=False)
    with ModelStub([{"size": 100_000}]) as stub:
        code, message = run(monkeypatch, tmp_path, spec(stub.url))
    text, final = decode_failure(message)
    assert code == FINAL_EXIT_CODE and final
    assert "does not fit the termination message" in text and "set spec.store" in text


@pytest.mark.parametrize(
    ("path", "seen"),
    [
        pytest.param("notes/a.txt", "contents of a", id="inside the working directory"),
        pytest.param("../secret.txt", "error: ../secret.txt: outside the files the agent may read", id="dot-dot"),
        pytest.param("/etc/hostname", "error: /etc/hostname: outside the files the agent may read", id="absolute"),
        pytest.param("link.txt", "error: link.txt: outside the files the agent may read", id="symlink out"),
        pytest.param("missing.txt", "error: missing.txt: no such file under", id="missing"),
    ],
)
def test_the_read_file_tool_reads_only_the_task_files(tmp_path: Path, path: str, seen: str) -> None:
    root = tmp_path / "work"
    (root / "notes").mkdir(parents=True)
    (root / "notes/a.txt").write_text("contents of a")
    (tmp_path / "secret.txt").write_text("do not read")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    with ModelStub([{"readFile": path}]) as stub:
        got = ask(spec(stub.url, maxTurns=3), files=agent.Files([root]))
    tool = stub.requests[1].body["messages"][-1]
    assert tool["role"] == "tool" and tool["content"].startswith(seen)
    assert "do not read" not in json.dumps(stub.requests[1].body)
    assert got.value.startswith("stub answer") and got.usage.requests == 2


def test_tool_calls_stop_at_max_turns() -> None:
    with ModelStub([{"readFile": "x"}] * 3) as stub:
        e = fails(spec(stub.url, maxTurns=2), files=agent.Files([Path.cwd()]))
    assert len(stub.requests) == 2
    assert "still calling tools after 2 turns" in e.message


def test_files_are_appended_to_the_prompt(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    with ModelStub() as stub:
        ask(spec(stub.url, files=["{{ item.path }}"]), files=agent.Files([tmp_path]))
    assert stub.requests[0].body["messages"][-1]["content"] == "Review a.py\n\n--- a.py ---\nx = 1\n"


def test_a_structured_answer_after_tool_calls_is_repaired_like_any_other(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    with ModelStub([{"readFile": "a.py"}, {"content": '```json\n{"findings": 3}\n```'}]) as stub:
        got = ask(spec(stub.url, maxTurns=2, outputSchema=FINDINGS), files=agent.Files([tmp_path]))
    assert got.value == {"findings": [{"line": 0}]}
    assert got.usage.requests == 3
    last = stub.requests[2].body["messages"]
    assert [m["role"] for m in last[-4:]] == ["assistant", "tool", "assistant", "user"]
    assert "$.findings is an integer; it must be array" in last[-1]["content"]
    assert stub.requests[0].body["tools"][0]["function"]["name"] == "read_file"
