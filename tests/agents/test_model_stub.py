"""The scripted model server itself: what it answers must be what the agent accepts."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from apwa.common.schema import check_schema, errors
from apwa.modelstub import ModelStub, instance


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(
            {"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "minLength": 6}}},
            id="minLength",
        ),
        pytest.param({"type": "array", "minItems": 3, "items": {"type": "integer", "minimum": 2}}, id="minItems"),
        pytest.param({"type": "array", "maxItems": 0}, id="maxItems 0"),
        pytest.param({"anyOf": [{"type": "null"}, {"type": "string"}]}, id="anyOf"),
        pytest.param({"enum": ["x", "y"]}, id="enum"),
        pytest.param(
            {
                "type": "object",
                "required": ["w"],
                "properties": {"w": {"$ref": "#/$defs/w"}},
                "$defs": {"w": {"const": 4}},
            },
            id="ref",
        ),
    ],
)
def test_schema_answers_satisfy_the_schema(schema: dict[str, Any]) -> None:
    check_schema(schema)
    assert errors(instance(schema), schema) == []


def test_binds_to_loopback_and_answers_only_chat_completions() -> None:
    with ModelStub() as stub:
        assert stub.url.startswith("http://127.0.0.1:")
        models = httpx.get(stub.url + "/models").json()
        wrong = httpx.post(stub.url + "/completions", json={})
        bad = httpx.post(stub.url + "/chat/completions", json={"model": "m"})
    assert models["data"][0]["id"] == "stub"
    assert wrong.status_code == 404 and bad.status_code == 400


def test_faults_come_in_order_then_normal_answers() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
    with ModelStub([{"status": 429, "retryAfter": 7}, {"body": "<html>"}]) as stub:
        replies = [httpx.post(stub.url + "/chat/completions", json=body) for _ in range(3)]
    assert replies[0].status_code == 429 and replies[0].headers["retry-after"] == "7"
    assert replies[1].text == "<html>"
    answer = replies[2].json()
    assert answer["choices"][0]["message"]["content"] == "stub answer: one two three"
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
