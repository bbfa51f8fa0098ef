import pytest
from apwa.manifest import ManifestError, parse_workload

POD = {"spec": {"containers": [{"name": "w", "image": "busybox", "command": ["true"]}]}}


def doc(**spec):
    base = {"decomposition": {"range": {"end": 3}}, "templates": {"default": {"podTemplate": POD}}}
    base.update(spec)
    return {"apiVersion": "apwa.dev/v1alpha1", "kind": "ParallelWorkload", "metadata": {"name": "w"}, "spec": base}


def problems(d):
    with pytest.raises(ManifestError) as e:
        parse_workload(d)
    return e.value.problems


def test_valid_defaults():
    w = parse_workload(doc())
    assert w.spec.parallelism == 10
    assert w.spec.templates["default"].backoff_limit == 0
    assert w.spec.failure.allowed(100) == 0
    assert w.spec.isolation_or_default.egress == "None"


def test_two_strategies_named():
    (p,) = problems(doc(decomposition={"range": {"end": 3}, "shards": {"count": 2}}))
    assert p.startswith("spec.decomposition:")
    assert "exactly one of" in p and "range, shards" in p


def test_no_strategy():
    (p,) = problems(doc(decomposition={}))
    assert "exactly one of" in p and "got: none" in p


def test_unknown_field_has_its_path():
    (p,) = problems(doc(paralelism=3))
    assert p == "spec.paralelism: unknown field"


def test_range_end_after_start():
    (p,) = problems(doc(decomposition={"range": {"start": 5, "end": 5}}))
    assert "spec.decomposition.range" in p and "greater than range.start" in p


def test_every_error_reported():
    ps = problems(doc(parallelism=0, decomposition={"shards": {"count": 0}}))
    assert any(p.startswith("spec.parallelism:") for p in ps)
    assert any(p.startswith("spec.decomposition.shards.count:") for p in ps)


def test_reduce_template_must_exist():
    (p,) = problems(doc(results={"reduce": {"template": "sum"}}))
    assert "results.reduce.template 'sum' is not in spec.templates" in p


def test_template_needs_containers():
    (p,) = problems(doc(templates={"default": {"podTemplate": {"spec": {}}}}))
    assert "podTemplate.spec.containers needs at least one container" in p


def test_custom_egress_needs_rules():
    (p,) = problems(doc(isolation={"egress": "Custom"}))
    assert "egress Custom needs egressRules" in p


@pytest.mark.parametrize(
    ("isolation", "read_only"),
    [({}, True), ({"readOnlyRootFilesystem": False}, False), ({"readOnlyRootFilesystem": True}, True)],
    ids=["default-read-only", "relaxed", "explicit"],
)
def test_read_only_root_filesystem_is_the_default(isolation, read_only):
    w = parse_workload(doc(isolation=isolation))
    assert w.spec.isolation_or_default.read_only_root_filesystem is read_only


def test_isolation_fields_are_checked():
    (p,) = problems(doc(isolation={"readOnlyRootFilesystem": "sometimes"}))
    assert p.startswith("spec.isolation.readOnlyRootFilesystem:")


def test_empty_matrix_axis():
    (p,) = problems(doc(decomposition={"matrix": {"a": [1], "b": []}}))
    assert p.startswith("spec.decomposition.matrix.b:") and "at least 1 item" in p


def test_failure_policy_budget():
    from apwa.api.models import FailurePolicy

    assert FailurePolicy(max_failed_subtasks=5).allowed(100) == 5
    assert FailurePolicy(max_failed_ratio=0.1).allowed(100) == 10
    assert FailurePolicy(max_failed_subtasks=5, max_failed_ratio=0.1).allowed(100) == 5
