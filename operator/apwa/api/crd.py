"""Generate the CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema (with $ref, anyOf-null for optionals, titles); Kubernetes wants a
*structural* OpenAPI v3 schema (inline, typed, no null unions). This module converts one into the
other and adds what only the CRD knows: printer columns, the status subresource, short names.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from apwa import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from apwa.api.models import ParallelWorkloadSpec, ParallelWorkloadStatus

_DROP = {"title", "additionalProperties", "$defs"}
_PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}


def _overlay(base: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    """A field's own keywords over its type's schema; CEL rules of both apply."""
    out = {**base, **{k: v for k, v in field.items() if k not in _DROP}}
    rules = base.get("x-kubernetes-validations", []) + field.get("x-kubernetes-validations", [])
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def _structural(node: Any, defs: dict[str, Any]) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        ref = node.pop("$ref").rsplit("/", 1)[-1]
        node = _overlay(_structural(defs[ref], defs), node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        inner = _structural(options[0], defs)
        node.pop("default", None)  # a None default means "unset"
        node = _overlay(inner, node)
    if node.pop("x-apwa-free-form", False):
        keep = {k: v for k, v in node.items() if k in ("description", "minProperties", "maxProperties")}
        return {"type": "object", **keep, **_PRESERVE}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "required" and not value):
            continue
        if key == "properties":
            out["properties"] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _structural(value, defs) if value else {**_PRESERVE, "nullable": True}  # list[Any]
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    addl = node.get("additionalProperties")
    if out.get("type") == "object" and "properties" in out and addl is True:
        out.update(_PRESERVE)  # typed where we rely on it, open for the rest
    if out.get("type") == "object" and "properties" not in out:
        if isinstance(addl, dict) and addl:
            out["additionalProperties"] = _structural(addl, defs)
        else:
            out.update(_PRESERVE)  # a free-form object (a PodTemplateSpec, a result value)
    if not out or set(out) <= {"description", "default"}:
        # typing.Any: any JSON value, null included. Without nullable, an item `null` is stored
        # but then breaks every CEL rule over it ("got null for schema with nullable=false"), and
        # with it every later write, status included (found by tests/integration/test_fuzz_operator.py).
        out.update(_PRESERVE, nullable=True)
    if "default" in out and isinstance(out["default"], dict | list):
        out.pop("default")  # object defaults would be applied by the API server wholesale
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)  # type: ignore[attr-defined]
    return _structural(raw, raw.get("$defs", {}))


def crd() -> dict[str, Any]:
    spec = openapi_schema(ParallelWorkloadSpec)
    status = openapi_schema(ParallelWorkloadStatus)
    status.pop("description", None)
    root = {
        "type": "object",
        "description": "A workload decomposed into independent subtasks, each run as its own isolated Job.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress", "description": "succeeded/total"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.counts.failed"},
        {"name": "Active", "type": "integer", "jsonPath": ".status.counts.active", "priority": 1},
        {
            "name": "Queued",
            "type": "integer",
            "jsonPath": ".status.counts.awaitingAdmission",
            "priority": 1,
            "description": "subtask Jobs awaiting admission by Kueue",
        },
        {"name": "Parallelism", "type": "integer", "jsonPath": ".spec.parallelism", "priority": 1},
        {"name": "Tokens", "type": "integer", "jsonPath": ".status.usage.totalTokens", "priority": 1},
        {"name": "Cost", "type": "string", "jsonPath": ".status.usage.estimatedCost", "priority": 1},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["apwa"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `apwa crd` from operator/apwa/api/models.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
