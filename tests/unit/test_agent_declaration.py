"""spec.agent: what the models refuse, what a subtask pod receives, the output-schema checker,
and the `usage` object of the result envelope."""

from __future__ import annotations

import json
from typing import Any

import pytest
from apwa.api.models import ParallelWorkloadSpec
from apwa.common.schema import SchemaError, check_schema, errors
from apwa.planning import plan
from apwa.rendering import Owner, render_job, render_reduce_job
from apwa.results.protocol import decode_result, decode_usage, encode_failure, encode_result, encode_usage
from pydantic import ValidationError

AGENT = {
    "url": "http://vllm.llm:8000/v1",
    "model": "qwen",
    "prompt": "Review {{ item }}",
    "egress": [{"podSelector": {"matchLabels": {"app": "vllm"}}, "ports": [{"port": 8000}]}],
}
POD = {
    "spec": {
        "containers": [{"name": "main", "image": "w", "command": ["apwa-agent"]}, {"name": "helper", "image": "h"}]
    }
}


def workload(deadline: int | None = None, **agent: Any) -> ParallelWorkloadSpec:
    template: dict[str, Any] = {"podTemplate": POD}
    if deadline is not None:
        template["activeDeadlineSeconds"] = deadline
    return ParallelWorkloadSpec.model_validate(
        {
            "decomposition": {"items": ["a.py", "b.py"]},
            "agent": {**AGENT, **agent},
            "templates": {"default": template},
            "results": {"reduce": {}},
        }
    )


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        pytest.param({"prompt": "Review {{ file }}"}, "agent.prompt: unknown placeholder {{ file }}", id="placeholder"),
        pytest.param({"files": ["{{ path }}"]}, "agent.files: unknown placeholder {{ path }}", id="file placeholder"),
        pytest.param(
            {"outputSchema": {"type": "object", "patternProperties": {}}},
            "agent.outputSchema uses patternProperties, which APWA does not enforce",
            id="unsupported keyword",
        ),
        pytest.param(
            {"outputSchema": {"type": "dict"}}, "agent.outputSchema.type 'dict' is not a JSON Schema type", id="type"
        ),
        pytest.param({"url": "vllm:8000"}, "agent.url", id="url without scheme"),
        pytest.param({"temperature": 3}, "agent.temperature", id="temperature"),
        pytest.param({"maxTurns": 0}, "agent.maxTurns", id="max turns"),
        pytest.param({"apiKeySecretRef": {"name": "llm"}}, "agent.apiKeySecretRef.key", id="secret key"),
    ],
)
def test_bad_declarations_are_refused_naming_the_field(agent: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        workload(**agent)
    text = str(e.value).replace("\n  ", " ")
    assert message in text


def test_the_agent_gives_up_before_its_pod_is_killed() -> None:
    with pytest.raises(ValidationError) as e:
        workload(deadline=600, deadlineSeconds=600)
    assert "agent.deadlineSeconds (600) must be less than spec.templates.default.activeDeadlineSeconds (600)" in str(
        e.value
    )
    workload(deadline=600, deadlineSeconds=540)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_subtask_pods_get_the_declaration_and_only_the_main_container_the_key() -> None:
    s = workload(apiKeySecretRef={"name": "llm", "key": "apiKey"})
    job = render_job(Owner("w"), s, plan(s)[0], 2)
    main, helper = job["spec"]["template"]["spec"]["containers"]
    declared = json.loads(env_of(main)["APWA_AGENT"])
    assert s.agent is not None and declared == s.agent.dump()  # the Secret's name and key, never a value
    assert env_of(main)["APWA_AGENT_API_KEY"] == {"secretKeyRef": {"name": "llm", "key": "apiKey"}}
    assert "APWA_AGENT_API_KEY" not in env_of(helper)
    assert env_of(main)["APWA_ITEM"] == '"a.py"'


def test_no_key_reference_no_key_variable() -> None:
    s = workload()
    main = render_job(Owner("w"), s, plan(s)[0], 2)["spec"]["template"]["spec"]["containers"][0]
    assert "APWA_AGENT" in env_of(main) and "APWA_AGENT_API_KEY" not in env_of(main)


def test_the_reduce_step_gets_no_agent_yet() -> None:
    job = render_reduce_job(Owner("w"), workload(apiKeySecretRef={"name": "llm", "key": "k"}), "cm", "results.json")
    names = {e["name"] for c in job["spec"]["template"]["spec"]["containers"] for e in c["env"]}
    assert not names & {"APWA_AGENT", "APWA_AGENT_API_KEY"}


SCHEMA = {
    "type": "object",
    "required": ["severity", "tags"],
    "additionalProperties": False,
    "properties": {
        "severity": {"enum": ["low", "high"]},
        "line": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "minLength": 1}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "where": {"$ref": "#/$defs/where"},
    },
    "$defs": {"where": {"type": "string", "pattern": "^[a-z/]+\\.py$"}},
}


@pytest.mark.parametrize(
    ("value", "found"),
    [
        pytest.param({"severity": "low", "tags": []}, [], id="valid"),
        pytest.param({"severity": "low", "tags": [], "line": 3.0}, [], id="integral float is an integer"),
        pytest.param({"tags": []}, ["$ lacks the required property 'severity'"], id="required"),
        pytest.param(
            {"severity": "mid", "tags": []}, ['$.severity is "mid"; it must be one of ["low", "high"]'], id="enum"
        ),
        pytest.param(
            {"severity": "low", "tags": [], "line": True}, ["$.line is a boolean; it must be integer"], id="bool"
        ),
        pytest.param({"severity": "low", "tags": [], "line": 0}, ["$.line is 0; it must be at least 1"], id="minimum"),
        pytest.param(
            {"severity": "low", "tags": ["a", "b", "c"]}, ["$.tags has 3 items; it may have at most 2"], id="max"
        ),
        pytest.param(
            {"severity": "low", "tags": [""]}, ["$.tags[0] has 0 characters; it needs at least 1"], id="minLen"
        ),
        pytest.param(
            {"severity": "low", "tags": [], "x": 1},
            ["$ has the property 'x', which the schema does not allow"],
            id="extra",
        ),
        pytest.param(
            {"severity": "low", "tags": [], "note": 5},
            ["$.note matches 0 of the anyOf alternatives; it must match at least one"],
            id="anyOf",
        ),
        pytest.param(
            {"severity": "low", "tags": [], "where": "a.txt"},
            ["$.where does not match the pattern '^[a-z/]+\\\\.py$'"],
            id="ref",
        ),
        pytest.param([], ["$ is an array; it must be object"], id="type"),
    ],
)
def test_output_schema_checks(value: Any, found: list[str]) -> None:
    check_schema(SCHEMA)
    assert errors(value, SCHEMA) == found


def test_remote_refs_are_refused() -> None:
    with pytest.raises(SchemaError, match=r"#.\$ref 'https://x/s.json': only local references"):
        check_schema({"$ref": "https://x/s.json"})


USAGE = {"prompt_tokens": 10, "completion_tokens": 3, "requests": 2, "retries": 1, "latency_seconds": 0.25}


@pytest.mark.parametrize(
    ("message", "usage"),
    [
        pytest.param(encode_result({"a": 1}, usage=USAGE).decode(), USAGE, id="result"),
        pytest.param(encode_failure("no", final=True, usage=USAGE).decode(), USAGE, id="failure"),
        pytest.param(encode_usage(USAGE).decode(), USAGE, id="usage only"),
        pytest.param(encode_result({"a": 1}).decode(), None, id="absent"),
        pytest.param('{"a": 1}', None, id="bare value"),
        pytest.param(
            '{"apwa":1,"len":1,"value":1,"usage":{"prompt_tokens":-1,"requests":"2","retries":1}}',
            {"retries": 1},
            id="malformed fields left out",
        ),
        pytest.param('{"apwa":1,"usage":', None, id="cut"),
    ],
)
def test_usage_is_read_from_the_envelope(message: str, usage: dict[str, Any] | None) -> None:
    assert decode_usage(message) == usage


def test_usage_does_not_change_the_result() -> None:
    assert decode_result(encode_result({"a": 1}, usage=USAGE).decode()) == {"a": 1}


def test_a_usage_only_envelope_is_never_a_result() -> None:
    with pytest.raises(ValueError, match="no stored result arrived"):
        decode_result(encode_usage(USAGE).decode())
