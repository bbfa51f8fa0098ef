import json
from pathlib import Path

from apwa.api.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "apwa.dev_parallelworkloads.yaml"


def test_checked_in_crd_matches_models():
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ drifted from the models: run `make crd`"


def walk(node, path="$"):
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_cel_rules_cover_the_issue():
    text = json.dumps(crd())
    for needle in [
        "exactly one of items, range, shards, matrix, configMapRef, planner, objects must be set",
        "range.end must be greater than range.start",
        "decomposition is immutable once set",
        "templates are immutable once set",
        "results.reduce.template names a template",
    ]:
        assert needle in text


def test_printer_columns_and_status():
    v = crd()["spec"]["versions"][0]
    assert v["subresources"] == {"status": {}}
    cols = {c["name"]: c["jsonPath"] for c in v["additionalPrinterColumns"]}
    assert cols["Phase"] == ".status.phase"
    assert cols["Progress"] == ".status.progress"
    assert cols["Failed"] == ".status.counts.failed"
    assert cols["Age"] == ".metadata.creationTimestamp"
    assert crd()["spec"]["names"]["shortNames"] == ["pwl"]
    assert v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["parallelism"]["minimum"] == 1
