"""Hypothesis strategies for the fuzz tests (tests/unit/test_fuzz_*.py, tests/integration/test_fuzz_*.py).

ParallelWorkload specs as a user (or an attacker) would write them, as plain JSON dicts with the
API's camelCase names: `valid_specs` are shaped after apwa.api.models and mostly pass, `specs`
adds mutations of them (a field replaced by a nasty value, a field dropped, an unknown field added
at any depth). Nasty values: strings with control characters, right-to-left marks, placeholders,
a megabyte of text; integers at and past int64 and float64; deep nesting; wrong types.

Settings: profiles registered in tests/conftest.py (`HYPOTHESIS_PROFILE`, default `ci`: derandomized,
no example database, so CI runs the same examples every time); each test sets its own example count.
"""

from __future__ import annotations

import re
from typing import Any

from apwa.api import models
from hypothesis import strategies as st
from pydantic import BaseModel

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# Strings that have broken parsers, templating and Kubernetes names elsewhere.
NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "\n",
    "default ",
    "Default",
    "-default",
    "a" * 64,
    "a" * 254,
    "{{ item }}",
    "{{ secret }}",
    "{{",
    "$(HOME)",
    "${HOME}",
    "../../etc/passwd",
    "\u202edefault",
    "\u0000\u001f",
    "ü",
    "😀",
    "http://",
    "https://10.0.0.1:99999/v1",
    "http://[::1]/v1",
    "0.0.0.0/0",
    "not-a-cidr",
    "null",
    "true",
    '{"apwa":1}',
]
NASTY_INTS = [0, -1, 1, 2**31, 2**53 + 1, INT64_MAX, INT64_MIN, 10**6, 100_001]
# Beyond int64 (the CRD's integer) and beyond float64 (any JSON number the API server keeps).
HUGE_INTS = [2**63, 2**64, -(2**63) - 1, 10**30, 10**308, 10**400]
NASTY_FLOATS = [0.0, -0.0, 0.5, 1e-300, 1e308, -1e308, 2.5]


def deep(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"a": value}
    return value


def json_values(*, kube: bool = True) -> st.SearchStrategy[Any]:
    """Any JSON value; `kube`: only what the API server's JSON carries (finite, within float64)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
        | st.sampled_from(NASTY_STRINGS)
    )
    if not kube:
        scalars = scalars | st.sampled_from(HUGE_INTS)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


def nasty_values(*, kube: bool = True) -> st.SearchStrategy[Any]:
    out = (
        st.sampled_from(NASTY_STRINGS)
        | st.sampled_from(NASTY_INTS)
        | st.sampled_from(NASTY_FLOATS)
        | st.text()
        | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
        | st.builds(deep, st.integers(1, 60))
        | st.just("x" * 100_000)
        | json_values(kube=kube)
    )
    return out | st.sampled_from(HUGE_INTS) if not kube else out


# ---- valid-shaped specs ---------------------------------------------------------------------
names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")
small_ints = st.integers(min_value=0, max_value=50)


def containers() -> st.SearchStrategy[list[dict[str, Any]]]:
    container = st.fixed_dictionaries(
        {"name": names, "image": st.sampled_from(["busybox", "python:3.11", "x"])},
        optional={"command": st.lists(st.text(max_size=10), max_size=3), "args": st.lists(st.text(max_size=10))},
    )
    return st.lists(container, min_size=1, max_size=3, unique_by=lambda c: c["name"])


def pod_failure_policies(container_names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    on_exit = st.fixed_dictionaries(
        {
            "operator": st.sampled_from(["In", "NotIn"]),
            "values": st.lists(st.integers(0, 255), min_size=1, max_size=4, unique=True).map(sorted),
        },
        optional={"containerName": st.sampled_from([*container_names, "ghost"])},
    )
    on_conditions = st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["DisruptionTarget", "ConfigIssue"])}), min_size=1, max_size=2
    )
    rule = st.one_of(
        st.fixed_dictionaries({"action": st.sampled_from(models.PodFailureAction.__args__), "onExitCodes": on_exit}),
        st.fixed_dictionaries(
            {"action": st.sampled_from(models.PodFailureAction.__args__), "onPodConditions": on_conditions}
        ),
    )
    return st.fixed_dictionaries({"rules": st.lists(rule, max_size=3)})


@st.composite
def job_templates(draw: st.DrawFn) -> dict[str, Any]:
    cs = draw(containers())
    out: dict[str, Any] = {"podTemplate": {"spec": {"containers": cs}}}
    optional = {
        "backoffLimit": st.integers(0, 100),
        "activeDeadlineSeconds": st.integers(1, 100_000),
        "ttlSecondsAfterFinished": small_ints,
        "podFailurePolicy": pod_failure_policies([c["name"] for c in cs]),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            out[key] = draw(strategy)
    return out


def decompositions(templates: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    item = json_values() | st.fixed_dictionaries({"template": st.sampled_from([*templates, "ghost"])})
    range_spec = st.fixed_dictionaries(
        {"end": st.integers(-5, 60)}, optional={"start": st.integers(-5, 30), "step": st.integers(0, 7)}
    )
    planner = st.fixed_dictionaries(
        {
            "type": st.sampled_from(["HTTP", "OpenAI"]),
            "url": st.sampled_from(["http://planner:8080/plan", "https://api.example/v1", "ftp://x"]),
            "query": st.text(min_size=0, max_size=30),
        },
        optional={"model": st.text(max_size=10), "maxSubtasks": st.integers(0, 200), "context": st.text(max_size=10)},
    )
    return st.one_of(
        st.fixed_dictionaries({"items": st.lists(item, max_size=12)}),
        st.fixed_dictionaries({"range": range_spec}),
        st.fixed_dictionaries({"shards": st.fixed_dictionaries({"count": st.integers(0, 40)})}),
        st.fixed_dictionaries(
            {"matrix": st.dictionaries(names, st.lists(json_values(), max_size=4), min_size=0, max_size=3)}
        ),
        st.fixed_dictionaries(
            {
                "configMapRef": st.fixed_dictionaries(
                    {"name": names, "key": names}, optional={"format": st.sampled_from(["Auto", "JSON", "JSONLines"])}
                )
            }
        ),
        st.fixed_dictionaries({"planner": planner}),
        st.fixed_dictionaries(
            {"objects": st.fixed_dictionaries({"prefix": st.sampled_from(["in/", "a/b/", "/abs/", "no-slash"])})}
        ),
    )


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Specs shaped after the models; most are valid, some break a cross-field rule on purpose."""
    template_names = draw(st.lists(names, min_size=0, max_size=2, unique=True))
    if draw(st.integers(0, 9)) > 0:
        template_names = ["default", *[n for n in template_names if n != "default"]]
    if not template_names:
        template_names = ["main"]
    templates = {n: draw(job_templates()) for n in template_names}
    spec: dict[str, Any] = {"decomposition": draw(decompositions(template_names)), "templates": templates}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "parallelism": st.integers(1, 200),
        "suspend": st.booleans(),
        "ttlSecondsAfterFinished": small_ints,
        "failurePolicy": st.fixed_dictionaries(
            {}, optional={"maxFailedSubtasks": small_ints, "maxFailedRatio": st.floats(0, 1)}
        ),
        "isolation": st.fixed_dictionaries(
            {},
            optional={
                "egress": st.sampled_from(["None", "DNS", "Custom"]),
                "egressRules": st.lists(st.fixed_dictionaries({"cidr": st.sampled_from(["10.0.0.0/8", "x"])})),
                "podSecurity": st.sampled_from(["Restricted", "Unrestricted"]),
            },
        ),
        "results": st.fixed_dictionaries(
            {"reduce": st.fixed_dictionaries({}, optional={"template": st.sampled_from([*template_names, "ghost"])})}
        ),
    }
    for key, strategy in optional.items():
        if draw(st.integers(0, 3)) == 0:
            spec[key] = draw(strategy)
    return spec


# ---- mutations ------------------------------------------------------------------------------
def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(root: Any, path: tuple[Any, ...], value: Any) -> None:
    node = root
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@st.composite
def mutated_specs(draw: st.DrawFn, *, kube: bool = True) -> dict[str, Any]:
    """A valid-shaped spec with 1-3 mutations: a value replaced, a key dropped, an unknown key added."""
    spec = draw(valid_specs())
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(spec) if p]
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "drop", "unknown"]))
        parent: Any = spec
        for part in path[:-1]:
            parent = parent[part]
        if kind == "replace":
            _set(spec, path, draw(nasty_values(kube=kube)))
        elif kind == "drop" and isinstance(parent, dict):
            parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["unknownField", "x", "Templates", "status", "apiVersion"]))] = draw(
                json_values()
            )
    return spec


def specs(*, kube: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Valid-shaped specs and mutated ones, about half each."""
    return valid_specs() | mutated_specs(kube=kube)


# ---- what "a message naming a field" means ---------------------------------------------------
def _aliases(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    out: set[str] = set()
    for name, field in model.model_fields.items():
        out.add(field.alias or name)
        for arg in _types(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= _aliases(arg, seen)
    return out


def _types(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _types(a)]


SPEC_FIELDS = frozenset(_aliases(models.ParallelWorkloadSpec))
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def names_a_field(text: str) -> bool:
    """True when `text` mentions one of the spec's field names (camelCase, as in the API)."""
    return any(w in SPEC_FIELDS for w in _WORD.findall(text))
