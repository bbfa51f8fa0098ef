"""Fuzzing the spec (issue 16, part 5a): generated ParallelWorkload specs, valid-shaped and mutated
(nasty strings, numbers at and past int64, deep nesting, unknown fields), through the models as the
operator reads them (`read_spec`) and through the planner.

The property: a spec is either refused, by a Stalled(InvalidSpec) whose message names the field,
or it becomes a spec that the planner turns into subtasks or refuses with a PlanningError naming
its field. Nothing else is ever raised (a stray exception in the operator is a retry loop).
"""

from __future__ import annotations

import json
from typing import Any

import fuzz_strategies as fz
import pytest
from apwa.api.models import ParallelWorkloadSpec
from apwa.api.vocabulary import Reason
from apwa.core import Stalled
from apwa.core.decide import read_spec
from apwa.planning import PlanningError, plan
from hypothesis import example, given, settings
from hypothesis import strategies as st

FAST = 300
SLOW = 5_000
TEMPLATES = MINIMAL_TEMPLATES = {"default": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "x"}]}}}}


def _data_for(spec: ParallelWorkloadSpec, data: Any) -> Any:
    """What the operator hands the planner for data-driven strategies (a ConfigMap's text, a
    stored plan's list); nothing for the others."""
    return data if spec.decomposition.strategy in ("configMapRef", "planner", "objects") else None


def check_spec(raw: dict[str, Any], data: Any) -> None:
    try:
        spec = read_spec(raw)
    except Stalled as e:
        assert e.reason == Reason.INVALID_SPEC
        lines = str(e).removeprefix("the spec is invalid: ").split("; ")
        for line in lines:
            path, _, message = line.partition(": ")
            assert path != "spec" or fz.names_a_field(message), f"names no field: {line!r}"
        return
    try:
        subtasks = plan(spec, data=_data_for(spec, data))
    except PlanningError as e:
        assert e.field.startswith("spec."), e
        return
    assert subtasks and [s.index for s in subtasks] == list(range(len(subtasks)))
    assert all(s.template in spec.templates for s in subtasks)


# Data as the operator may find it: ConfigMap text of any kind, or a stored plan.
planner_data = (
    st.text(max_size=200)
    | st.lists(fz.json_values(), max_size=5).map(json.dumps)
    | st.lists(fz.json_values(), max_size=5).map(lambda v: "\n".join(json.dumps(x) for x in v))
    | st.sampled_from(["[NaN]", "1e999\n", "[" + "9" * 5000 + "]", "[" * 5000, "[" * 3000 + "]" * 3000])
    | st.lists(fz.json_values(), max_size=5)
    | st.none()
)


# Regression examples: what this fuzzing found (docs in /work/notes/fuzz.md, "Findings").
@example(  # len(range(...)) raised OverflowError past sys.maxsize subtasks (an int64 range)
    {"decomposition": {"range": {"start": fz.INT64_MIN, "end": fz.INT64_MAX}}, "templates": MINIMAL_TEMPLATES}, None
)
@example(  # json.loads raised RecursionError on a deeply nested ConfigMap entry
    {"decomposition": {"configMapRef": {"name": "c", "key": "k"}}, "templates": MINIMAL_TEMPLATES}, "[" * 5000
)
@example(  # ... and ValueError (not JSONDecodeError) on an integer of more than 4,300 digits
    {"decomposition": {"configMapRef": {"name": "c", "key": "k"}}, "templates": MINIMAL_TEMPLATES},
    "[" + "9" * 5000 + "]",
)
@example(  # NaN became an item that no Job env or status could carry
    {
        "decomposition": {"configMapRef": {"name": "c", "key": "k", "format": "JSONLines"}},
        "templates": MINIMAL_TEMPLATES,
    },
    "NaN\n",
)
@given(raw=fz.specs(kube=False), data=planner_data)
@settings(max_examples=FAST)
def test_a_fuzzed_spec_is_refused_naming_a_field_or_planned(raw: dict[str, Any], data: Any) -> None:
    check_spec(raw, data)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # thousands of examples: longer than the suite's 600 s per test
@given(raw=fz.specs(kube=False), data=planner_data)
@settings(max_examples=SLOW)
def test_thousands_of_fuzzed_specs_are_refused_naming_a_field_or_planned(raw: dict[str, Any], data: Any) -> None:
    check_spec(raw, data)
