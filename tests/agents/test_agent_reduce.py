"""The LLM reduce (apwa.agent_reduce) against the scripted model server on 127.0.0.1: one request
when the results fit one prompt, rounds of bounded fan-in when they don't, usage over all of them,
and the whole thing through `apwa run --local` with status.usage counting the reduce."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from apwa import agent_reduce
from apwa.agent import AgentClient, AgentError
from apwa.api.models import AgentSpec, ReduceAgent
from apwa.modelstub import ModelStub

REPORT = {
    "type": "object",
    "required": ["summary"],
    "properties": {"summary": {"type": "string"}},
}


def merge(url: str, lines: list[str], **reduce: Any) -> tuple[Any, AgentClient]:
    spec = AgentSpec.model_validate({"url": url, "model": "m", "prompt": "unused", "retries": 2})
    r = ReduceAgent.model_validate({"prompt": "Merge these {{ count }} reviews.", "outputSchema": REPORT, **reduce})
    client = AgentClient(backoff=0.01)
    value = asyncio.run(agent_reduce.reduce(spec, r, lines, {"count": len(lines), "workload": "w"}, client=client))
    return value, client


def lines(n: int, width: int = 10) -> list[str]:
    return agent_reduce.result_lines((i, "x" * width) for i in range(n))


GROUPS = [
    pytest.param(10, 4, 10_000, [4, 4, 2], id="fan-in-bounds"),
    pytest.param(10, 64, 105, [3, 3, 3, 1], id="chars-bound"),
    pytest.param(1, 8, 1000, [1], id="one"),
]


@pytest.mark.parametrize(("n", "fan_in", "chars", "sizes"), GROUPS)
def test_groups(n: int, fan_in: int, chars: int, sizes: list[int]) -> None:
    got = agent_reduce.groups(lines(n), fan_in, chars)
    assert [len(g) for g in got] == sizes
    assert [line for g in got for line in g] == lines(n), "index order is kept"


def test_an_input_larger_than_a_prompt_is_a_final_error() -> None:
    with pytest.raises(AgentError, match="maxInputChars") as e:
        agent_reduce.groups(lines(2, width=5000), 8, 1000)
    assert e.value.final


ROUNDS = [
    # results, fanIn, requests: 20 -> 5 -> 2 -> 1 at fan-in 4
    pytest.param(3, 8, 1, id="fits-one-prompt"),
    pytest.param(20, 4, 5 + 2 + 1, id="three-rounds"),
    pytest.param(9, 3, 3 + 1, id="two-rounds"),
]


@pytest.mark.parametrize(("n", "fan_in", "requests"), ROUNDS)
def test_rounds_of_bounded_fan_in(n: int, fan_in: int, requests: int) -> None:
    with ModelStub() as stub:
        value, client = merge(stub.url, lines(n), fanIn=fan_in)
    assert isinstance(value["summary"], str)
    assert len(stub.requests) == requests == client.usage().requests
    inputs = [json.loads(line) for seen in stub.requests for line in _inputs(seen)]
    assert all(1 <= len(_inputs(seen)) <= fan_in for seen in stub.requests), "no merge of more than fanIn"
    assert sorted(i["index"] for i in inputs if "index" in i) == list(range(n)), "each result read once"
    assert sum("summary" in i for i in inputs) == requests - 1, "each partial merge read once"


def test_a_partial_merge_that_fails_the_schema_is_repaired() -> None:
    with ModelStub([{"content": "not json"}]) as stub:
        value, client = merge(stub.url, lines(4), fanIn=2)
    assert isinstance(value["summary"], str)
    assert client.usage().requests == 3 + 1, "three merges and one repair"


def test_inputs_that_never_pair_up_are_a_final_error() -> None:
    with ModelStub() as stub, pytest.raises(AgentError, match="no two inputs fit") as e:
        merge(stub.url, lines(3, width=700), maxInputChars=1000)
    assert e.value.final and not stub.requests


def test_apwa_run_local_with_an_llm_reduce(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "apwa.dev/v1alpha1",
        "kind": "ParallelWorkload",
        "metadata": {"name": "summary"},
        "spec": {
            "decomposition": {"range": {"end": 6}},
            "agent": {"url": "URL", "model": "m", "prompt": "Describe {{ item }}", "outputSchema": REPORT},
            "templates": {
                "default": {
                    "podTemplate": {"spec": {"containers": [{"name": "a", "image": "i", "command": ["apwa-agent"]}]}}
                }
            },
            "results": {
                "reduce": {"agent": {"prompt": "Merge {{ count }} answers.", "outputSchema": REPORT, "fanIn": 4}}
            },
        },
    }
    with ModelStub() as stub:
        manifest["spec"]["agent"]["url"] = stub.url
        path = tmp_path / "w.yaml"
        path.write_text(yaml.safe_dump(manifest))
        done = subprocess.run(
            [sys.executable, "-m", "apwa.cli", "run", "--local", str(path), "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    status = yaml.safe_load(done.stdout)["status"]
    assert status["phase"] == "Succeeded" and isinstance(status["result"]["summary"], str)
    # 6 subtasks, then 6 -> 2 -> 1 merges: 3 requests, and the reduce's report counted too.
    assert len(stub.requests) == 6 + 3
    assert status["usage"]["requests"] == 9 and status["usage"]["reports"] == 7
    merges = [r.body["messages"][-1]["content"] for r in stub.requests[6:]]
    assert all(m.startswith("Merge 6 answers.") for m in merges)


def _inputs(seen: Any) -> list[str]:
    return seen.body["messages"][-1]["content"].split("\n\n", 1)[1].splitlines()
