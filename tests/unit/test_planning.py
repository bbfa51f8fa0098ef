import json

import pytest
from apwa.api.models import ParallelWorkloadSpec
from apwa.planning import PlanningError, plan
from apwa.planning.configmap import parse
from pydantic import ValidationError

POD = {"spec": {"containers": [{"name": "w", "image": "busybox"}]}}


def spec(decomposition, templates=("default",)):
    return ParallelWorkloadSpec.model_validate(
        {"decomposition": decomposition, "templates": {t: {"podTemplate": POD} for t in templates}}
    )


def test_range():
    assert [s.item for s in plan(spec({"range": {"start": 2, "end": 11, "step": 3}}))] == [2, 5, 8]


def test_shards():
    subs = plan(spec({"shards": {"count": 3}}))
    assert [s.item for s in subs] == [{"shard": i, "count": 3} for i in range(3)]
    assert [s.index for s in subs] == [0, 1, 2]


def test_matrix_order_is_written_order_last_axis_fastest():
    subs = plan(spec({"matrix": {"b": [1, 2], "a": ["x", "y", "z"]}}))
    assert [(s.item["b"], s.item["a"]) for s in subs] == [
        (1, "x"),
        (1, "y"),
        (1, "z"),
        (2, "x"),
        (2, "y"),
        (2, "z"),
    ]


def test_same_spec_same_plan():
    d = {"matrix": {"m": list(range(20)), "t": [0.1, 0.2]}}
    assert plan(spec(d)) == plan(spec(d))


def test_heterogeneous_items_pick_templates():
    subs = plan(spec({"items": [1, "two", {"template": "gpu", "x": 1}, [3]]}, ("default", "gpu")))
    assert [s.template for s in subs] == ["default", "default", "gpu", "default"]


def test_missing_template_names_field_and_choices():
    with pytest.raises(PlanningError) as e:
        plan(spec({"items": [1, {"template": "gpu"}]}))
    assert e.value.field == "spec.decomposition.items[1]"
    assert "names template 'gpu'" in e.value.message and "have: default" in e.value.message


def test_missing_default_template():
    with pytest.raises(PlanningError, match="'default' template"):
        plan(spec({"items": [1]}, ("other",)))


def test_missing_default_template_of_a_strategy_without_template_names_is_refused_by_the_model():
    with pytest.raises(ValidationError, match=r"spec.templates needs a 'default' template \(range subtasks"):
        spec({"range": {"end": 2}}, ("other",))


def test_maximum():
    with pytest.raises(PlanningError, match="200 subtasks is more than the maximum of 100"):
        plan(spec({"range": {"end": 200}}), max_subtasks=100)
    with pytest.raises(PlanningError, match="maximum of 2"):
        plan(spec({"configMapRef": {"name": "c", "key": "k"}}), data="[1,2,3]", max_subtasks=2)


def test_configmap_json_and_lines():
    s = spec({"configMapRef": {"name": "c", "key": "k"}})
    assert [x.item for x in plan(s, data='[{"a": 1}, 2]')] == [{"a": 1}, 2]
    assert [x.item for x in plan(s, data='{"a": 1}\n\n"b"\n')] == [{"a": 1}, "b"]


def test_configmap_bad_json_is_named():
    with pytest.raises(PlanningError) as e:
        parse("[1, 2,", "JSON")
    assert "not valid JSON" in str(e.value)
    with pytest.raises(PlanningError, match="line 2 is not valid JSON"):
        parse('{"a": 1}\nnope\n', "Auto")
    with pytest.raises(PlanningError, match="expected a JSON array"):
        parse('{"a": 1}', "JSON")


def test_empty_plan_is_an_error():
    with pytest.raises(PlanningError, match="no subtasks"):
        plan(spec({"configMapRef": {"name": "c", "key": "k"}}), data="")


def test_planner_needs_stored_plan():
    s = spec({"planner": {"type": "HTTP", "url": "http://x", "query": "q"}})
    with pytest.raises(PlanningError, match="no stored plan"):
        plan(s)
    assert [x.item for x in plan(s, data=json.loads('["a", "b"]'))] == ["a", "b"]
