"""Fuzzing the CRD on the real API server (issue 16, part 5b): generated specs (tests/fuzz_strategies.py)
sent as a server-side dry-run create (`dryRun=All`, strict field validation as kubectl sends it) into
a namespace of the session, and through the models as the operator reads them.

Properties:
* the API server accepts, or refuses with a message naming a field;
* the models and the CRD agree: what the models refuse, the API server refuses too, or it is one of
  the DOCUMENTED divergences below, which the operator turns into a Stalled condition (InvalidSpec)
  naming the field (tests/integration/test_fuzz_operator.py shows it on the running operator);
* what the models accept, the API server accepts (else `apwa validate` would pass a manifest that
  `kubectl apply` refuses). No divergence is allowed this way.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import fuzz_strategies as fz
import pytest
from apwa import GROUP, KIND, PLURAL, VERSION
from apwa.core import Stalled
from apwa.core.decide import read_spec
from hypothesis import HealthCheck, example, given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException

FAST = 250
REPO = Path(__file__).resolve().parents[2]
SLOW = 3_000
# The models refuse these, the CRD can't: each needs a look inside a free-form field (the pod template
# and matrix are x-kubernetes-preserve-unknown-fields, which neither the schema nor CEL can type).
# The operator reports each as Stalled/InvalidSpec with the field named.
DOCUMENTED = {
    "matrix-empty-axis": re.compile(r"spec\.decomposition\.matrix\.[^:]*: List should have at least 1 item"),
    "pod-failure-policy-container": re.compile(r"onExitCodes\.containerName .* is not a container"),
    "template-name-not-dns-label": re.compile(r"spec.templates: the name .* must be a DNS label"),
    "podtemplate-containers-shape": re.compile(r"podTemplate\.spec\.containers"),
    "items-template-unknown": re.compile(r"names template .* which is not in spec\.templates"),
}
_FIELD = re.compile(r"\bspec(\.[A-Za-z0-9_\-\[\]]+)+")
_SUITE = {"hypothesis": settings(suppress_health_check=[HealthCheck.function_scoped_fixture])}
MINIMAL = {"default": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "x"}]}}}}
seen: Counter[str] = Counter()


def dry_run(api: client.ApiClient, namespace: str, spec: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """The API server's answer: (201, "", the spec as it would be stored) or (code, message, {})."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "fuzz"}, "spec": spec}
    try:
        stored = client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict", _request_timeout=30
        )
    except ApiException as e:
        status = json.loads(e.body or "{}")
        causes = status.get("details", {}).get("causes", [])
        return (
            e.status,
            " ".join([status.get("message", ""), *(f"{c.get('field')} {c.get('message')}" for c in causes)]),
            {},
        )
    return 201, "", stored["spec"]


def models_verdict(spec: dict[str, Any]) -> str | None:
    """None when the operator would take the spec; its Stalled message otherwise."""
    try:
        read_spec(spec)
    except Stalled as e:
        return str(e)
    return None


def check_agreement(api: client.ApiClient, namespace: str, spec: dict[str, Any]) -> None:
    code, message, stored = dry_run(api, namespace, spec)
    # The operator reads what the API server stored (nulls pruned, defaults applied), not what was sent.
    refused_by_models = models_verdict(stored if code == 201 else spec)
    if code != 201:
        assert code in (400, 422), f"dry run answered {code}: {message}"
        assert _FIELD.search(message) or fz.names_a_field(message), f"the API server named no field: {message}"
        seen["api refused"] += 1
    assert not (refused_by_models is None and code != 201), f"the models accept what the API server refuses: {message}"
    if refused_by_models is not None and code == 201:
        kind = next((k for k, rx in DOCUMENTED.items() if rx.search(refused_by_models)), None)
        assert kind is not None, f"a new divergence: the API server accepts what the models refuse: {refused_by_models}"
        seen[f"divergence {kind}"] += 1
    seen["examples"] += 1


@pytest.fixture
def fuzz_ns(namespace: str, crd: None) -> str:
    # Applied again per test: on a cluster shared with other checkouts, another session's `crd`
    # fixture may have put its own (older) CRD back since this session's.
    subprocess.run(
        ["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds")],
        check=True,
        capture_output=True,
    )
    return namespace


# Regression examples for what this fuzzing found (docs: /work/notes/fuzz.md, "Findings").
@example({"decomposition": {}, "templates": MINIMAL})  # no strategy: the CRD took it (CEL counts only typed ones)
@example(  # a container without a name: the CRD took it
    {
        "decomposition": {"shards": {"count": 2}},
        "templates": {"default": {"podTemplate": {"spec": {"containers": [{"image": "x"}]}}}},
    }
)
@example(  # range without a default template: the models took it, the API server refused it
    {"decomposition": {"range": {"end": 3}}, "templates": {"other": MINIMAL["default"]}}
)
@example({"decomposition": {"items": [1]}, "templates": {}})  # no template: the models took it
@example(  # a null template: the API server prunes it, so the operator never sees it (no divergence)
    {"decomposition": {"items": [1]}, "templates": {**MINIMAL, "unknownField": None}}
)
@given(spec=fz.specs(kube=True))
@settings(max_examples=FAST, parent=_SUITE["hypothesis"])
def test_the_api_server_and_the_models_agree_on_fuzzed_specs(
    api: client.ApiClient, fuzz_ns: str, spec: dict[str, Any]
) -> None:
    check_agreement(api, fuzz_ns, spec)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # thousands of examples: longer than the suite's 600 s per test
@given(spec=fz.specs(kube=True))
@settings(max_examples=SLOW, parent=_SUITE["hypothesis"])
def test_thousands_of_fuzzed_specs_agree(api: client.ApiClient, fuzz_ns: str, spec: dict[str, Any]) -> None:
    check_agreement(api, fuzz_ns, spec)


@pytest.mark.parametrize(
    "number", [pytest.param(10**400, id="400-digit-integer"), pytest.param(-(10**309), id="minus-1e309")]
)
def test_numbers_past_float64_are_refused_by_the_json_decoder(api: client.ApiClient, fuzz_ns: str, number: int) -> None:
    """A documented divergence: the models accept an item of 400 digits, the API server's JSON
    decoder refuses it (400, naming no field) before any schema runs. Nothing reaches the operator;
    items that come from elsewhere (a ConfigMap, a planner) are refused by apwa.common.kjson."""
    code, message, _ = dry_run(api, fuzz_ns, {"decomposition": {"items": [number]}, "templates": MINIMAL})
    assert code == 400 and "cannot unmarshal number" in message, message
    assert models_verdict({"decomposition": {"items": [number]}, "templates": MINIMAL}) is None


def test_report_what_was_seen() -> None:
    print(f"\nfuzz CRD: {dict(seen)}")
