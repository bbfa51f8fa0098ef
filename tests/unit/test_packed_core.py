"""Packed execution's pure parts: index ranges, the chunk's Indexed Job, its subtasks' states, the
window that waits for a whole chunk, and the worker reading its subtask from the chunk's plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from apwa import worker
from apwa.api.models import ParallelWorkloadSpec
from apwa.core import ChildIndex, decide
from apwa.core.children import INDEX_FAILED, chunk_of, index_of
from apwa.planning import plan
from apwa.rendering import Owner, RenderError
from apwa.rendering.packed import (
    ANNOTATION_INDICES,
    COMPLETION_INDEX,
    PLAN_PATH,
    format_indices,
    parse_indices,
    render_chunk,
)
from core_builders import NOW, POD, ok, running, world

OWNER = Owner("w", "ns", "uid-w")


def packed_spec(n: int = 10, chunk: int = 4, parallelism: int = 8, **template: Any) -> ParallelWorkloadSpec:
    return ParallelWorkloadSpec.model_validate(
        {
            "decomposition": {"range": {"end": n}},
            "parallelism": parallelism,
            "execution": {"mode": "Packed", "chunkSize": chunk},
            "templates": {"default": {"podTemplate": template.pop("pod", POD), **template}},
        }
    )


@pytest.mark.parametrize(
    ("indices", "text"),
    [
        pytest.param([], "", id="none"),
        pytest.param([5], "5", id="one"),
        pytest.param([0, 1, 2, 3], "0-3", id="a-run"),
        pytest.param([1, 3, 4, 5, 9, 10], "1,3-5,9-10", id="runs-and-singles"),
        pytest.param([7, 2, 3], "7,2-3", id="order-kept"),
    ],
)
def test_index_ranges_round_trip(indices: list[int], text: str) -> None:
    assert format_indices(indices) == text
    assert list(parse_indices(text)) == indices


def test_a_chunk_is_an_indexed_job_with_per_index_retries_and_its_plan() -> None:
    s = packed_spec(backoffLimit=2, activeDeadlineSeconds=60)
    subtasks = plan(s)[4:8]
    job, cm = render_chunk(OWNER, s, subtasks, 10)
    js = job["spec"]
    assert job["metadata"]["name"] == "w-c4" and cm["metadata"]["name"].startswith("w-c4-")
    assert (js["completionMode"], js["completions"], js["parallelism"], js["backoffLimitPerIndex"]) == (
        "Indexed",
        4,
        4,
        2,
    )
    assert "backoffLimit" not in js and "maxFailedIndexes" not in js and "activeDeadlineSeconds" not in js
    pod = js["template"]["spec"]
    assert pod["activeDeadlineSeconds"] == 60  # a subtask's deadline stays its own, not the chunk's
    assert {r["action"] for r in js["podFailurePolicy"]["rules"]} == {"FailIndex"}  # a final failure: its index only
    assert js["template"]["metadata"]["annotations"][ANNOTATION_INDICES] == "4-7"
    assert job["metadata"]["annotations"][ANNOTATION_INDICES] == "4-7"
    lines = [json.loads(line) for line in cm["data"]["plan.jsonl"].splitlines()]
    assert lines == [{"index": i, "item": i} for i in range(4, 8)]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["APWA_PLAN_PATH"] == PLAN_PATH and "APWA_INDEX" not in env and "APWA_ITEM" not in env
    assert {"name": "apwa-plan", "configMap": {"name": cm["metadata"]["name"]}} in pod["volumes"]
    other, other_plan = render_chunk(OWNER, s, plan(s)[4:6], 10)  # cut differently: another plan
    assert other["metadata"]["name"] == "w-c4" and other_plan["metadata"]["name"] != cm["metadata"]["name"]
    # Isolation as for any subtask pod.
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_a_retry_chunk_is_named_for_its_attempt() -> None:
    s = packed_spec()
    job, _ = render_chunk(OWNER, s, [plan(s)[3], plan(s)[6]], 10, attempt=2)
    assert job["metadata"]["name"] == "w-c3-r2"
    assert job["metadata"]["annotations"][ANNOTATION_INDICES] == "3,6"
    assert job["metadata"]["labels"]["apwa.dev/attempt"] == "2"


@pytest.mark.parametrize("placeholder", ["{{ index }}", "{{ item }}", "{{ item.a }}"])
def test_per_subtask_placeholders_are_refused_naming_the_field(placeholder: str) -> None:
    pod = {"spec": {"containers": [{"name": "main", "image": "i", "args": [placeholder]}]}}
    s = packed_spec(pod=pod)
    with pytest.raises(RenderError) as e:
        render_chunk(OWNER, s, plan(s)[:2], 10)
    assert e.value.field == "spec.templates.default.podTemplate.spec.containers[0]"
    assert PLAN_PATH in str(e.value)


def test_count_and_workload_placeholders_still_work() -> None:
    pod = {"spec": {"containers": [{"name": "main", "image": "i", "args": ["{{ workload }}/{{ count }}"]}]}}
    s = packed_spec(pod=pod)
    job, _ = render_chunk(OWNER, s, plan(s)[:2], 10)
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["w/10"]


def chunk_body(indices: str, *, completed: str = "", failed: str = "", finished: str | None = None) -> dict[str, Any]:
    conditions = [{"type": finished, "status": "True", "reason": "X"}] if finished else []
    return {
        "kind": "Job",
        "metadata": {
            "name": "w-c0",
            "uid": "u0",
            "labels": {"apwa.dev/role": "subtask", "apwa.dev/chunk": "0", "apwa.dev/attempt": "0"},
            "annotations": {ANNOTATION_INDICES: indices},
        },
        "spec": {},
        "status": {"completedIndexes": completed, "failedIndexes": failed, "conditions": conditions},
    }


def test_a_chunk_job_becomes_one_state_per_subtask_and_only_changes_are_applied() -> None:
    children = ChildIndex()
    effect = children.job_event("ADDED", chunk_body("0-3"), (), NOW)
    assert effect.changed and effect.finished is None
    assert sorted(children.jobs) == [0, 1, 2, 3] and not any(j.finished for j in children.jobs.values())
    effect = children.job_event("MODIFIED", chunk_body("0-3", completed="1", failed="2"), (), NOW)
    assert effect.finished is not None
    one, two = children.jobs[1], children.jobs[2]
    assert one.finished and one.succeeded and one.finished_at == NOW
    assert two.finished and not two.succeeded and two.reason == INDEX_FAILED
    assert not children.jobs[0].finished
    # The same status again changes nothing: no step is woken for it.
    assert not children.job_event("MODIFIED", chunk_body("0-3", completed="1", failed="2"), (), NOW + 5).changed
    assert children.jobs[1].finished_at == NOW


def test_a_recorded_subtask_is_left_out_and_the_ttl_waits_for_the_chunks_last() -> None:
    children = ChildIndex()
    children.job_event("ADDED", chunk_body("0-2", completed="0-2"), {0}, NOW)
    assert sorted(children.jobs) == [1, 2]
    assert children.release(1) is False  # subtask 2 is still to be recorded
    assert children.release(2) is True


def test_a_deleted_chunk_loses_its_unrecorded_subtasks() -> None:
    children = ChildIndex(cursor=4)
    children.job_event("ADDED", chunk_body("0-3", completed="0"), (), NOW)
    children.job_event("DELETED", chunk_body("0-3", completed="0"), {0}, NOW)
    assert sorted(children.jobs) == [0]  # recorded: kept until released, never created again
    assert children.cursor == 1 and children.lost == {1, 2, 3}


def test_a_packed_pod_maps_to_its_subtask_by_completion_index() -> None:
    pod = {"metadata": {"annotations": {ANNOTATION_INDICES: "3,7-9", COMPLETION_INDEX: "2"}, "labels": {}}}
    assert index_of(pod) == 8
    assert chunk_of({**pod, "kind": "Pod"}) is None
    assert chunk_of(chunk_body("3,7-9")) == (3, 7, 8, 9)


@pytest.mark.parametrize(
    ("finished", "parallelism", "created"),
    [
        pytest.param(0, 8, [0, 1, 2, 3, 4, 5, 6, 7], id="empty-window-fills"),
        pytest.param(2, 8, [], id="two-free-slots-wait-for-a-whole-chunk"),
        pytest.param(4, 8, [8, 9, 10, 11], id="a-whole-chunk-fits"),
        pytest.param(0, 3, [0, 1, 2], id="a-window-smaller-than-a-chunk-still-runs"),
    ],
)
def test_the_window_starts_whole_chunks(finished: int, parallelism: int, created: list[int]) -> None:
    s = packed_spec(n=16, chunk=4, parallelism=parallelism)
    w = world(s)
    if finished or created == []:
        # 8 created; the first `finished` of them recorded, the rest running.
        w = world(s, jobs={i: running(i) for i in range(finished, 8)}, outcomes=[ok(i) for i in range(finished)])
        w.children.cursor = 8
    step = decide(w, NOW)
    creates = [a for a in step.actions if type(a).__name__ == "CreateJobs"]
    assert (list(creates[0].indices) if creates else []) == created


def test_the_worker_reads_its_subtask_from_the_chunk_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plan.jsonl"
    path.write_text('{"index":4,"item":"a"}\n{"index":9,"item":{"k":1}}\n')
    monkeypatch.setenv("APWA_PLAN_PATH", str(path))
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("APWA_ITEM", '"ignored"')
    assert worker.item() == {"k": 1} and worker.index() == 9
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    with pytest.raises(SystemExit, match="no line 2"):
        worker.item()


def test_packed_with_object_inputs_is_refused() -> None:
    body = {
        "decomposition": {"objects": {"prefix": "in/"}},
        "execution": {"mode": "Packed"},
        "store": {"s3": {"bucket": "bkt", "credentialsSecret": "s"}},
        "templates": {"default": {"podTemplate": POD}},
    }
    with pytest.raises(ValueError, match=r"Packed does not support decomposition\.objects"):
        ParallelWorkloadSpec.model_validate(body)
