"""A JSON Schema validator for the subset that structured-output servers honour.

OpenAI's structured outputs, vLLM's and Ollama's grammar-guided decoding all accept a small core
of JSON Schema (types, properties, required, items, enum, const, bounds, anyOf, local $refs);
an output schema is meant for them, so that core is what APWA checks, and a schema using
anything else is refused when the workload is validated (`check_schema`) rather than silently
not enforced. Written here rather than taken from the `jsonschema` package: that one brings
four more dependencies (one compiled) into the worker image for far more than this needs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples", "$defs"})
_CHECKED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "pattern",
        "anyOf",
        "allOf",
        "oneOf",
        "$ref",
    }
)
MAX_ERRORS = 5


class SchemaError(ValueError):
    """A schema APWA can't enforce; the message names the place in the schema."""


def check_schema(schema: Any, where: str = "#") -> None:
    """SchemaError unless every keyword of `schema` is one `validate` enforces or an annotation."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{where} must be a JSON object (a schema), not {type(schema).__name__}")
    unknown = sorted(set(schema) - _CHECKED - _ANNOTATIONS)
    if unknown:
        raise SchemaError(
            f"{where} uses {', '.join(unknown)}, which APWA does not enforce; supported: {', '.join(sorted(_CHECKED))}"
        )
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []:
        if kind not in _TYPES:
            raise SchemaError(f"{where}.type {kind!r} is not a JSON Schema type ({', '.join(_TYPES)})")
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/$defs/")):
        raise SchemaError(f"{where}.$ref {ref!r}: only local references (#/$defs/NAME) are supported")
    for key, sub in _subschemas(schema):
        check_schema(sub, f"{where}.{key}")


def _subschemas(schema: dict[str, Any]) -> list[tuple[str, Any]]:
    subs: list[tuple[str, Any]] = [(f"properties.{k}", v) for k, v in (schema.get("properties") or {}).items()]
    subs += [(f"$defs.{k}", v) for k, v in (schema.get("$defs") or {}).items()]
    if isinstance(schema.get("items"), dict):
        subs.append(("items", schema["items"]))
    if isinstance(schema.get("additionalProperties"), dict):
        subs.append(("additionalProperties", schema["additionalProperties"]))
    for key in ("anyOf", "allOf", "oneOf"):
        subs += [(f"{key}[{i}]", s) for i, s in enumerate(schema.get(key) or [])]
    return subs


def errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Where `value` breaks `schema`: at most MAX_ERRORS sentences a model can act on; [] if valid."""
    out: list[str] = []
    _check(value, schema, schema, "$", out)
    return out[:MAX_ERRORS]


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str, out: list[str]) -> None:
    if "$ref" in schema:
        schema = root.get("$defs", {}).get(schema["$ref"].removeprefix("#/$defs/"), {})
    if not _type_ok(value, schema, at, out):
        return
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at} is {_short(value)}; it must be one of {_short(schema['enum'])}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{at} must be {_short(schema['const'])}")
    _bounds(value, schema, at, out)
    if isinstance(value, dict):
        _object(value, schema, root, at, out)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            _check(v, schema["items"], root, f"{at}[{i}]", out)
    _combinators(value, schema, root, at, out)


def _type_ok(value: Any, schema: dict[str, Any], at: str, out: list[str]) -> bool:
    kinds = schema.get("type")
    if kinds is None:
        return True
    kinds = kinds if isinstance(kinds, list) else [kinds]
    for kind in kinds:
        is_bool = isinstance(value, bool)
        if isinstance(value, _TYPES[kind]) and (kind == "boolean" or not is_bool):
            return True
        if kind == "integer" and isinstance(value, float) and value.is_integer():
            return True
    out.append(f"{at} is {_kind(value)}; it must be {' or '.join(kinds)}")
    return False


def _bounds(value: Any, schema: dict[str, Any], at: str, out: list[str]) -> None:
    size = len(value) if isinstance(value, str | list) else None
    if size is not None:
        what = "characters" if isinstance(value, str) else "items"
        low, high = (
            schema.get("minLength" if what == "characters" else "minItems"),
            schema.get("maxLength" if what == "characters" else "maxItems"),
        )
        if low is not None and size < low:
            out.append(f"{at} has {size} {what}; it needs at least {low}")
        if high is not None and size > high:
            out.append(f"{at} has {size} {what}; it may have at most {high}")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{at} is {value}; it must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{at} is {value}; it must be at most {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{at} does not match the pattern {schema['pattern']!r}")


def _object(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], at: str, out: list[str]) -> None:
    props = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in value:
            out.append(f"{at} lacks the required property {name!r}")
    extra = schema.get("additionalProperties", True)
    for name, v in value.items():
        if name in props:
            _check(v, props[name], root, f"{at}.{name}", out)
        elif extra is False:
            out.append(f"{at} has the property {name!r}, which the schema does not allow")
        elif isinstance(extra, dict):
            _check(v, extra, root, f"{at}.{name}", out)


def _combinators(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str, out: list[str]) -> None:
    for sub in schema.get("allOf") or []:
        _check(value, sub, root, at, out)
    for key, wanted in (("anyOf", "at least one"), ("oneOf", "exactly one")):
        if key not in schema:
            continue
        matches = sum(1 for sub in schema[key] if not errors_of(value, sub, root))
        if matches == 0 or (key == "oneOf" and matches != 1):
            out.append(f"{at} matches {matches} of the {key} alternatives; it must match {wanted}")


def errors_of(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    out: list[str] = []
    _check(value, schema, root, "$", out)
    return out


def _kind(value: Any) -> str:
    for name, types in _TYPES.items():
        if isinstance(value, types) and not (isinstance(value, bool) and name != "boolean"):
            return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    return type(value).__name__


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
