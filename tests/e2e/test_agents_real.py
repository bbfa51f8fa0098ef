"""Agents on real containers: examples/agents/code-review.yaml through the in-cluster operator on
the real node, each pod's `apwa-agent` asking the scripted model server on this machine's node
address, through the NetworkPolicy rule the operator derives from spec.agent.url; and an LLM
reduce. The control: the same agent with its egress pointed elsewhere reaches nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apwa.modelstub import ModelStub, words
from e2e_examples import example_namespace, wait_finished, with_image
from real_node import RealNode

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/agents/code-review.yaml"
KEY_SECRET, API_KEY = "llm-api-key", "sk-e2e-0123456789"
REPORT = {"type": "object", "required": ["summary"], "properties": {"summary": {"type": "string"}}}


@pytest.fixture(scope="module")
def stub() -> Iterator[ModelStub]:
    """The scripted server on the node's address (pods reach it there; it exists while the real
    node is up), on any free port."""
    with ModelStub(host=os.environ.get("APWA_NODE_IP", "10.254.0.1")) as server:
        yield server


@pytest.fixture
def agents_ns(incluster_operator: RealNode) -> Iterator[str]:
    node = incluster_operator
    with example_namespace(node.kubectl, "agents-") as ns:
        node.kubectl("-n", ns, "create", "secret", "generic", KEY_SECRET, f"--from-literal=apiKey={API_KEY}")
        yield ns


def example(node: RealNode, url: str) -> dict[str, Any]:
    doc = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "ParallelWorkload")
    doc = with_image(doc, node.images["worker"], node.place)
    doc["spec"]["agent"].update(url=url, apiKeySecretRef={"name": KEY_SECRET, "key": "apiKey"})
    doc["spec"]["parallelism"] = 8
    return doc


def run(node: RealNode, ns: str, doc: dict[str, Any]) -> dict[str, Any]:
    node.kubectl("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump(doc))
    name = doc["metadata"]["name"]
    return wait_finished(lambda: node.get("-n", ns, "parallelworkload", name), f"{ns}/{name}")["status"]


def test_the_code_review_example_runs_on_real_pods(
    incluster_operator: RealNode, agents_ns: str, stub: ModelStub
) -> None:
    node = incluster_operator
    doc = example(node, stub.url)
    n = len(doc["spec"]["decomposition"]["items"])
    before = len(stub.requests)
    status = run(node, agents_ns, doc)
    assert status["phase"] == "Succeeded", status
    assert status["result"]["reviewed"] == n and status["result"]["counts"]["info"] == n
    seen = stub.requests[before:]
    assert len(seen) == n, "one model request per module, through the derived egress rule"
    assert {s.headers.get("authorization") for s in seen} == {f"Bearer {API_KEY}"}, "the key came from the Secret"
    assert status["usage"]["requests"] == n and status["usage"]["reports"] == n
    # The stub counts words as tokens: the status holds exactly what it reported.
    assert status["usage"]["promptTokens"] == sum(words(s.body["messages"]) for s in seen)


def test_an_llm_reduce_on_real_pods(incluster_operator: RealNode, agents_ns: str, stub: ModelStub) -> None:
    node = incluster_operator
    doc = example(node, stub.url)
    spec = doc["spec"]
    spec["decomposition"]["items"] = spec["decomposition"]["items"][:5]
    spec["templates"]["reduce"]["podTemplate"]["spec"]["containers"][0]["command"] = ["apwa-agent"]
    spec["results"]["reduce"]["agent"] = {
        "prompt": "Merge the {{ count }} reviews.",
        "outputSchema": REPORT,
        "fanIn": 2,
    }
    doc["metadata"]["name"] = "llm-reduce"
    before = len(stub.requests)
    status = run(node, agents_ns, doc)
    assert status["phase"] == "Succeeded", status
    assert isinstance(status["result"]["summary"], str)
    # 5 reviews, then merges 5 -> 3 -> 2 -> 1: 3 + 2 + 1 requests from the reduce pod.
    assert len(stub.requests) - before == 5 + 6
    assert status["usage"]["requests"] == 11 and status["usage"]["reports"] == 6


def test_control_an_agent_whose_egress_points_elsewhere_reaches_nothing(
    incluster_operator: RealNode, agents_ns: str, stub: ModelStub
) -> None:
    """The guard off for the model (egress to another address): the same pods can't reach it."""
    node = incluster_operator
    doc = example(node, stub.url)
    spec = doc["spec"]
    spec["decomposition"]["items"] = spec["decomposition"]["items"][:2]
    spec["agent"].update(egress=[{"cidr": "192.0.2.1/32"}], retries=1, timeoutSeconds=5, deadlineSeconds=30)
    spec["failurePolicy"] = {"maxFailedRatio": 1}
    spec.pop("results")
    spec["templates"]["default"]["backoffLimit"] = 0
    doc["metadata"]["name"] = "no-way-out"
    before = len(stub.requests)
    status = run(node, agents_ns, doc)
    assert status["counts"]["failed"] == 2, status
    assert len(stub.requests) == before, "no request got through the NetworkPolicy"
    message = status["failedSubtasks"][0]["message"]
    assert "spec.agent" in message, message
