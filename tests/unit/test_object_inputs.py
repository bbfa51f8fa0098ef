"""decomposition.objects, the pure parts: grouping a listing into items, safe file names, the
model rules, the fetch-inputs init container, and what the CLI says."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from apwa.api.models import ObjectsSpec, ParallelWorkloadSpec
from apwa.cli import main as cli_main
from apwa.controller.dynamic import PlanContext, keep_plan
from apwa.controller.inputs import every_object
from apwa.controller.store import read_payload
from apwa.planning import PlanningError, plan
from apwa.planning.objects import MAX_KEYS_BYTES, Packer, group, input_name
from apwa.rendering import Owner, render_job
from apwa.results.protocol import message_budget
from apwa.store.agent import _input_paths
from apwa.store.s3 import StoreError
from pydantic import ValidationError

STORE = {"s3": {"bucket": "inputs", "endpoint": "http://s3:9000", "pathStyle": True, "credentialsSecret": "s3"}}
OWNER = Owner("scan", "ns", "uid-1")


def objects(**fields: Any) -> ObjectsSpec:
    return ObjectsSpec.model_validate({"prefix": "in/", **fields})


def listing(*sizes: int, prefix: str = "in/") -> list[tuple[str, int]]:
    return [(f"{prefix}{i:03d}", size) for i, size in enumerate(sizes)]


def keys_of(items: list[dict[str, Any]]) -> list[list[str]]:
    return [[k.removeprefix("in/") for k in item["keys"]] for item in items]


@pytest.mark.parametrize(
    ("fields", "sizes", "want"),
    [
        pytest.param({}, (5, 5, 5), [["000"], ["001"], ["002"]], id="one-object-per-subtask-by-default"),
        pytest.param({"maxObjectsPerSubtask": 2}, (5, 5, 5), [["000", "001"], ["002"]], id="count-limit"),
        pytest.param(
            {"maxObjectsPerSubtask": 10, "maxBytesPerSubtask": 10},
            (4, 4, 4, 6, 4),
            [["000", "001"], ["002", "003"], ["004"]],
            id="byte-limit-closes-before-it-would-be-passed",
        ),
        pytest.param(
            {"maxObjectsPerSubtask": 10, "maxBytesPerSubtask": 10},
            (3, 50, 3, 3),
            [["000"], ["001"], ["002", "003"]],
            id="an-oversized-object-gets-a-subtask-of-its-own",
        ),
        pytest.param(
            {"maxObjectsPerSubtask": 10, "maxBytesPerSubtask": 10},
            (50, 60),
            [["000"], ["001"]],
            id="two-oversized-objects-in-a-row",
        ),
        pytest.param(
            {"maxObjectsPerSubtask": 3, "maxBytesPerSubtask": 10},
            (1, 1, 1, 1, 9, 1),
            [["000", "001", "002"], ["003", "004"], ["005"]],
            id="whichever-limit-comes-first",
        ),
        pytest.param({"maxObjectsPerSubtask": 2}, (0, 0, 0), [["000", "001"], ["002"]], id="empty-objects-count"),
    ],
)
def test_grouping(fields: dict[str, Any], sizes: tuple[int, ...], want: list[list[str]]) -> None:
    items = group(listing(*sizes), objects(**fields))
    assert keys_of(items) == want
    assert [item["bytes"] for item in items] == [
        sum(sizes[int(k)] for k in ks) for ks in want
    ]  # every object exactly once, sizes summed


def test_grouping_is_deterministic_and_one_shape() -> None:
    spec = objects(maxObjectsPerSubtask=7, maxBytesPerSubtask=1000)
    objs = [(f"in/{i:05d}.json", (i * 37) % 400) for i in range(500)]
    first, second = group(objs, spec), group(list(objs), spec)
    assert first == second
    assert all(set(item) == {"keys", "bytes"} for item in first)
    assert [k for item in first for k in item["keys"]] == [k for k, _ in objs]


@pytest.mark.parametrize(
    ("listed", "want"),
    [
        pytest.param([("in/a/", 0), ("in/a/x", 1), ("in/b/", 0), ("in/b/y", 2)], ["in/a/x", "in/b/y"], id="with-slash"),
        pytest.param(
            [("in/a", 0), ("in/a.txt", 3), ("in/a/x", 1), ("in/b", 0)],
            ["in/a.txt", "in/a/x", "in/b"],
            id="as-obstore-lists-them-keys-between-kept-in-order",
        ),
        pytest.param([("in/a", 0), ("in/a/b", 0), ("in/a/b/c", 5)], ["in/a/b/c"], id="nested"),
        pytest.param([("in/a", 0), ("in/a0", 1)], ["in/a", "in/a0"], id="an-empty-object-without-a-folder-is-kept"),
        pytest.param([("in/a", 4), ("in/a/x", 1)], ["in/a", "in/a/x"], id="a-non-empty-object-is-never-a-marker"),
    ],
)
def test_folder_markers_are_skipped(listed: list[tuple[str, int]], want: list[str]) -> None:
    items = group(listed, objects(maxObjectsPerSubtask=2))
    assert [k for item in items for k in item["keys"]] == want
    assert all(len(item["keys"]) <= 2 for item in items)


def test_keys_close_a_subtask_before_the_item_gets_too_big_for_the_environment() -> None:
    long = [(f"in/{i:05d}/" + "/".join(["x" * 200] * 4), 1) for i in range(200)]
    items = group(long, objects(maxObjectsPerSubtask=10_000))
    assert len(items) > 1
    assert all(len(json.dumps(item["keys"])) <= MAX_KEYS_BYTES for item in items)
    assert sum(len(item["keys"]) for item in items) == 200


@pytest.mark.parametrize(
    ("objs", "match"),
    [
        pytest.param([], r"spec.decomposition.objects.prefix: no objects under prefix 'in/' in", id="empty-prefix"),
        pytest.param([("in/", 0)], "no objects under prefix", id="only-a-folder-marker"),
        pytest.param([("in/b", 1), ("in/a", 1)], "not in key order", id="out-of-order-listing"),
        pytest.param([("in/a", 1), ("in/a", 1)], "not in key order", id="duplicate-key"),
        pytest.param([("in/../etc/passwd", 1)], r"'\.\.' path segment", id="dot-dot-segment"),
        pytest.param([("in//abs", 1)], "empty", id="empty-segment"),
        pytest.param([("in/", 1)], "no objects", id="a-folder-marker-with-bytes-is-still-a-marker"),
    ],
)
def test_planning_errors(objs: list[tuple[str, int]], match: str) -> None:
    with pytest.raises(PlanningError, match=match):
        group(objs, objects())


def test_more_subtasks_than_allowed_stops_the_listing() -> None:
    seen = []

    def endless():
        for i in range(10**9):
            seen.append(i)
            yield f"in/{i:010d}", 1

    with pytest.raises(PlanningError, match="more than the maximum of 100 subtasks; raise maxObjectsPerSubtask"):
        group(endless(), objects(), max_subtasks=100)
    assert len(seen) == 102  # the 101st subtask closes when the 102nd object arrives


def test_packer_counts_what_it_listed() -> None:
    p = Packer(objects(maxObjectsPerSubtask=2))
    for key, size in listing(1, 2, 3):
        p.add(key, size)
    assert len(p.finish()) == 2 and (p.objects, p.bytes) == (3, 6)


@pytest.mark.parametrize(
    ("prefix", "key", "name"),
    [
        pytest.param("in/", "in/a.txt", "a.txt", id="plain"),
        pytest.param("in/", "in/sub/dir/a.txt", "sub/dir/a.txt", id="nested"),
        pytest.param("in/", "in/..a", "..a", id="dots-inside-a-name-are-fine"),
    ],
)
def test_input_name(prefix: str, key: str, name: str) -> None:
    assert input_name(prefix, key) == name


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("in/..", id="dot-dot"),
        pytest.param("in/a/../../x", id="dot-dot-inside"),
        pytest.param("in/./a", id="dot"),
        pytest.param("in/a//b", id="empty-segment"),
        pytest.param("in/" + "x" * 256, id="segment-too-long"),
        pytest.param("in/", id="the-prefix-itself"),
        pytest.param("out/a", id="not-under-the-prefix"),
    ],
)
def test_unsafe_input_names_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        input_name("in/", key)


def test_fetch_container_refuses_paths_outside_its_directory(tmp_path: Path) -> None:
    root, targets = _input_paths(tmp_path, "in/", ["in/a", "in/d/b"])
    assert targets == [("in/a", root / "a"), ("in/d/b", root / "d" / "b")]
    with pytest.raises(StoreError, match="path segment"):
        _input_paths(tmp_path, "in/", ["in/../../etc/passwd"])


# ---- the model ---------------------------------------------------------------------------------
def workload(decomposition: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "decomposition": decomposition or {"objects": {"prefix": "in/", "maxObjectsPerSubtask": 2}},
        "templates": {"default": {"podTemplate": {"spec": {"containers": [{"name": "w", "image": "img"}]}}}},
        **extra,
    }


def test_objects_need_a_store() -> None:
    with pytest.raises(ValidationError, match=r"decomposition\.objects needs spec\.store"):
        ParallelWorkloadSpec.model_validate(workload())
    assert ParallelWorkloadSpec.model_validate(workload(store=STORE)).decomposition.strategy == "objects"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"prefix": ""}, id="empty-prefix"),
        pytest.param({"prefix": "/abs/"}, id="leading-slash"),
        pytest.param({"prefix": "logs/2026-"}, id="not-a-folder"),
        pytest.param({"prefix": "in/", "maxObjectsPerSubtask": 0}, id="zero-objects"),
        pytest.param({"prefix": "in/", "maxObjectsPerSubtask": 10_001}, id="too-many-objects"),
        pytest.param({"prefix": "in/", "maxBytesPerSubtask": 0}, id="zero-bytes"),
    ],
)
def test_objects_fields_are_checked(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ParallelWorkloadSpec.model_validate(workload({"objects": fields}, store=STORE))


def test_plan_takes_the_stored_items() -> None:
    spec = ParallelWorkloadSpec.model_validate(workload(store=STORE))
    items = group(listing(1, 2, 3), spec.decomposition.objects)  # type: ignore[arg-type]
    subtasks = plan(spec, data=items)
    assert [(s.index, s.item, s.template) for s in subtasks] == [(i, item, "default") for i, item in enumerate(items)]
    with pytest.raises(PlanningError, match="no stored plan yet"):
        plan(spec)


# ---- rendering -----------------------------------------------------------------------------------
def rendered(**extra: Any) -> dict[str, Any]:
    spec = ParallelWorkloadSpec.model_validate(workload(store=STORE, **extra))
    item = {"keys": ["in/a.txt", "in/sub/b.txt"], "bytes": 12}
    return render_job(OWNER, spec, plan(spec, data=[item])[0], 1)["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def test_fetch_inputs_runs_first_and_alone_holds_the_credentials() -> None:
    pod = rendered()
    names = [c["name"] for c in pod["initContainers"]]
    assert names == ["apwa-fetch", "apwa-store"]
    fetch = pod["initContainers"][0]
    assert fetch["command"] == ["apwa-store", "fetch-inputs"]
    env = env_of(fetch)
    assert json.loads(env["APWA_ITEM"]) == {"keys": ["in/a.txt", "in/sub/b.txt"], "bytes": 12}
    assert (env["APWA_INPUT_PREFIX"], env["APWA_INPUT_DIR"]) == ("in/", "/apwa/input")
    assert env["APWA_S3_BUCKET"] == "inputs" and env["APWA_S3_PATH_STYLE"] == "true"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "secretAccessKey", "optional": False}}
    assert fetch["volumeMounts"] == [{"name": "apwa-input", "mountPath": "/apwa/input"}]
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "apwa-input", "emptyDir": {}} in pod["volumes"]


def test_main_containers_read_the_inputs_read_only_without_credentials() -> None:
    pod = rendered()
    (main,) = pod["containers"]
    env = env_of(main)
    assert (env["APWA_INPUT_DIR"], env["APWA_INPUT_PREFIX"]) == ("/apwa/input", "in/")
    assert not any(name.startswith("AWS_") for name in env)
    assert {"name": "apwa-input", "mountPath": "/apwa/input", "readOnly": True} in main["volumeMounts"]


def test_the_fetch_container_counts_in_the_pods_message_budget() -> None:
    containers = [{"name": f"c{i}", "image": "img"} for i in range(3)]
    spec = ParallelWorkloadSpec.model_validate(
        {**workload(store=STORE), "templates": {"default": {"podTemplate": {"spec": {"containers": containers}}}}}
    )
    pod = render_job(OWNER, spec, plan(spec, data=[{"keys": ["in/a"], "bytes": 1}])[0], 1)["spec"]["template"]["spec"]
    assert len(pod["containers"]) + len(pod["initContainers"]) == 5  # 3 + the store sidecar + apwa-fetch
    assert {env_of(c)["APWA_RESULT_LIMIT"] for c in pod["containers"]} == {str(message_budget(pod))} == {"2457"}


def test_other_strategies_get_no_fetch_container() -> None:
    spec = ParallelWorkloadSpec.model_validate(workload({"items": [1]}, store=STORE))
    pod = render_job(OWNER, spec, plan(spec)[0], 1)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["apwa-store"]
    assert "APWA_INPUT_DIR" not in env_of(pod["containers"][0])


# ---- the CLI --------------------------------------------------------------------------------------
MANIFEST = """
apiVersion: apwa.dev/v1alpha1
kind: ParallelWorkload
metadata: {name: scan}
spec:
  decomposition: {objects: {prefix: in/}}
  store: {s3: {bucket: inputs, credentialsSecret: s3}}
  templates:
    default: {podTemplate: {spec: {containers: [{name: w, image: img}]}}}
"""


@pytest.mark.parametrize("command", [["plan"], ["run", "--local"]])
def test_the_cli_says_objects_are_listed_on_the_cluster(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "scan.yaml"
    f.write_text(MANIFEST)
    assert cli_main([*command, str(f)]) != 0
    err = capsys.readouterr().err
    assert "spec.decomposition.objects" in err and "listed by the operator on a cluster" in err


def test_validate_does_not_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "scan.yaml"
    f.write_text(MANIFEST)
    assert cli_main(["validate", str(f)]) == 0
    assert "is valid (objects not listed: the operator does)" in capsys.readouterr().out


# ---- the listing ----------------------------------------------------------------------------------
class FolderBucket:
    """Bucket.folders / Bucket.keys over a fixed set of keys, with S3's delimiter semantics."""

    def __init__(self, keys: list[str]) -> None:
        self.keys_listed: list[str] = []
        self._keys = sorted(keys)

    async def folders(self, prefix: str) -> tuple[list[str], list[tuple[str, int]]]:
        under = [k[len(prefix) :] for k in self._keys if k.startswith(prefix)]
        folders = sorted({prefix + rest.split("/", 1)[0] + "/" for rest in under if "/" in rest})
        return folders, [(prefix + rest, len(rest)) for rest in under if "/" not in rest]

    async def keys(self, prefix: str, **_: Any) -> Any:
        self.keys_listed.append(prefix)
        for k in self._keys:
            if k.startswith(prefix):
                await asyncio.sleep(0)
                yield k, len(k) - len(prefix)


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(["in/a", "in/b", "in/c"], id="flat"),
        pytest.param([f"in/{d:02d}/{i:03d}" for d in range(30) for i in range(5)], id="many-folders"),
        pytest.param(
            ["in/a.txt", "in/a/x", "in/a/y/z", "in/a0", "in/b", "in/b/c", "in/b-c"], id="names-around-a-slash"
        ),
        pytest.param(["in/x/1", "in/x/2"], id="one-folder"),
    ],
)
def test_every_object_lists_in_key_order(keys: list[str]) -> None:
    bucket = FolderBucket([*keys, "other/k", "inn/k"])

    async def listed() -> list[str]:
        return [k async for k, _ in every_object(bucket, "in/", fan_out=3)]  # type: ignore[arg-type]

    assert asyncio.run(listed()) == sorted(keys)
    assert sorted(bucket.keys_listed) == sorted({k[: k.index("/", 3) + 1] for k in keys if "/" in k[3:]})


# ---- storing the plan: dynamic.keep_plan with an offload ---------------------------------------
class MemoryKube:
    """ConfigMaps in memory; `winner` is created by "another operator" just before our create."""

    def __init__(self, winner: dict[str, Any] | None = None) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.winner = winner

    async def get(self, path: str) -> dict[str, Any] | None:
        return self.objects.get(path)

    async def create(self, path: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        key = f"{path}/{body['metadata']['name']}"
        if self.winner is not None:
            self.objects.setdefault(key, self.winner)
        if key in self.objects:
            return False, self.objects[key]
        self.objects[key] = body
        return True, body


class MemoryOffload:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, payload: bytes) -> dict[str, Any]:
        key = f"plan-{len(self.objects)}"
        self.objects[key] = payload
        return {"key": key}

    async def get(self, pointer: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self.objects[pointer["key"]])


def keep(kube: MemoryKube, offload: MemoryOffload, items: list[Any] | None) -> list[Any]:
    async def compute() -> tuple[dict[str, Any], list[Any]]:
        assert items is not None, "listed again"
        return {"objects": {"prefix": "in/"}}, items

    async def report(what: str) -> None:
        pass

    ctx = PlanContext(kube, Owner("scan", "ns", "uid-1"), 100_000, report)  # type: ignore[arg-type]
    return asyncio.run(keep_plan(ctx, "spec.decomposition.objects", compute, offload=offload))


def big(salt: str = "") -> list[dict[str, Any]]:
    """A plan that does not compress into a ConfigMap (a hash in every key, as real names have)."""
    return [{"keys": [f"in/{hashlib.sha256(f'{salt}{i}'.encode()).hexdigest()}"], "bytes": i} for i in range(40_000)]


BIG = big()
SMALL = [{"keys": ["in/a"], "bytes": 1}]


def stored_document(kube: MemoryKube) -> dict[str, Any]:
    (cm,) = kube.objects.values()
    section = cm.get("data") or cm.get("binaryData")
    return json.loads(
        read_payload({("data" if "data" in cm else "binaryData"): {"results.json": section["plan.json"]}})
    )


def test_a_plan_too_big_for_its_config_map_is_offloaded_behind_a_pointer() -> None:
    kube, offload = MemoryKube(), MemoryOffload()
    assert keep(kube, offload, BIG) == BIG
    document = stored_document(kube)
    assert document["storedAs"] == {"key": "plan-0"} and document["subtaskCount"] == len(BIG)
    assert "subtasks" not in document and document["objects"] == {"prefix": "in/"}
    assert keep(kube, offload, None) == BIG  # read back through the pointer, not computed again


def test_a_plan_that_fits_stays_in_its_config_map() -> None:
    kube, offload = MemoryKube(), MemoryOffload()
    assert keep(kube, offload, SMALL) == SMALL
    assert stored_document(kube)["subtasks"] == SMALL and not offload.objects


def test_the_loser_of_a_race_adopts_the_plan_the_winners_pointer_names() -> None:
    first, offload = MemoryKube(), MemoryOffload()
    keep(first, offload, BIG)
    (winner,) = first.objects.values()
    changed = big("another listing")  # the prefix changed between the two operators' listings
    assert keep(MemoryKube(winner=winner), offload, changed) == BIG
    assert len(offload.objects) == 2  # the loser's own object is left unused


def test_the_example_validates(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "store" / "objects.yaml"
    assert cli_main(["validate", str(example)]) == 0
    assert "is valid (objects not listed" in capsys.readouterr().out
