"""The operator end to end on the local control plane (kwok finishes the pods)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from kubernetes import client, watch
from workloads import Workloads, all_succeeded, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


STRATEGIES = {
    "items": ({"items": ["a", 2, {"k": "v"}, {"template": "big", "n": 4}]}, 4),
    "range": ({"range": {"start": 10, "end": 20, "step": 2}}, 5),
    "shards": ({"shards": {"count": 6}}, 6),
    "matrix": ({"matrix": {"m": ["x", "y"], "t": [0, 1, 2]}}, 6),
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_end_to_end(w: Workloads, strategy: str) -> None:
    decomposition, total = STRATEGIES[strategy]
    env = {"KWOK_MESSAGE": "{{ item }}"}
    templates = {"default": {"podTemplate": pod_template(env)}, "big": {"podTemplate": pod_template(env)}}
    w.create(workload("wl", decomposition, templates=templates, parallelism=3))
    done = w.wait_condition("wl", "Complete")
    status = done["status"]
    assert status["phase"] == "Succeeded"
    assert status["counts"] == {
        "total": total,
        "pending": 0,
        "active": 0,
        "succeeded": total,
        "failed": 0,
        "awaitingAdmission": 0,
    }
    assert status["progress"] == f"{total}/{total}"
    assert status["observedGeneration"] == done["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "Complete": "True",
        "Failed": "False",
    }
    # Each subtask's termination message (its item, through the placeholder) is its result.
    from apwa.api.models import ParallelWorkloadSpec
    from apwa.planning import plan

    subtasks = plan(ParallelWorkloadSpec.model_validate(done["spec"]))
    results = w.results("wl")
    assert sorted(results) == list(range(total))
    for s in subtasks:
        assert results[s.index] == {"ok": True, "result": s.item}
    assert [r["result"] for r in status["result"]] == [s.item for s in subtasks]

    jobs = {j.metadata.name: j for j in w.jobs("wl")}
    assert sorted(jobs) == sorted(f"wl-{i}" for i in range(total))
    uid = done["metadata"]["uid"]
    for j in jobs.values():
        assert j.metadata.owner_references[0].uid == uid
        assert j.spec.template.spec.automount_service_account_token is False
        assert j.spec.template.spec.security_context.run_as_non_root is True
    netpol = client.NetworkingV1Api(w.co.api_client).read_namespaced_network_policy("wl-isolation", w.ns)
    assert netpol.spec.ingress is None or netpol.spec.ingress == []
    assert netpol.spec.policy_types == ["Ingress", "Egress"]


def test_configmap_items_stall_then_heal(w: Workloads) -> None:
    w.create(workload("cm", {"configMapRef": {"name": "inputs", "key": "items.jsonl"}}))
    stalled = w.wait_condition("cm", "Stalled")
    cond = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
    assert cond["reason"] == "PlanningFailed"
    assert "ConfigMap 'inputs' not found" in cond["message"]
    assert stalled["status"]["phase"] == "Pending"

    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="inputs"), data={"items.jsonl": '{"a": 1}\nnot json\n'})
    w.core.create_namespaced_config_map(w.ns, body)
    wait_for(
        lambda: "line 2 is not valid JSON" in (w.condition("cm", "Stalled") or {}).get("message", ""),
        60,
        "Stalled message about the invalid JSON line",
    )
    w.core.patch_namespaced_config_map("inputs", w.ns, {"data": {"items.jsonl": '{"a": 1}\n{"a": 2}\n'}})
    done = w.wait_condition("cm", "Complete", timeout=90)
    assert done["status"]["counts"]["succeeded"] == 2
    assert (w.condition("cm", "Stalled") or {})["status"] == "False"


def test_invalid_template_reference_is_stalled_and_others_go_on(w: Workloads) -> None:
    w.create(workload("bad", {"items": [1, {"template": "gpu"}]}))
    w.create(workload("good", {"range": {"end": 3}}))
    stalled = w.wait_condition("bad", "Stalled")
    msg = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")["message"]
    assert "spec.decomposition.items[1]" in msg and "'gpu'" in msg
    w.wait_condition("good", "Complete")
    assert w.jobs("bad") == []


def test_results_reduce(w: Workloads) -> None:
    templates = {
        "default": {"podTemplate": pod_template({"KWOK_MESSAGE": '{"sq": {{ item }}}'})},
        "sum": {"podTemplate": pod_template({"KWOK_MESSAGE": '"reduced"'})},
    }
    w.create(workload("red", {"range": {"end": 5}}, templates=templates, results={"reduce": {"template": "sum"}}))
    done = w.wait_condition("red", "Complete")
    assert done["status"]["result"] == "reduced"
    cm = w.core.read_namespaced_config_map("red-reduce-input", w.ns)
    data = json.loads(cm.data["results.json"])
    assert data["results"] == [{"index": i, "result": {"sq": i}} for i in range(5)]
    reduce_job = w.batch.read_namespaced_job("red-reduce", w.ns)
    mounts = reduce_job.spec.template.spec.containers[0].volume_mounts
    # The results mount, beside the writable /tmp of the read-only root file system.
    assert {m.mount_path for m in mounts} == {"/apwa/results", "/tmp"}


def test_failure_policy_stops_new_jobs(w: Workloads) -> None:
    env = {"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "3", "KWOK_MESSAGE": "boom {{ index }}"}
    w.create(workload("fp", {"range": {"end": 20}}, env, parallelism=2, failurePolicy={"maxFailedSubtasks": 1}))
    failed = w.wait_condition("fp", "Failed")
    status = failed["status"]
    assert status["phase"] == "Failed"
    assert status["counts"]["failed"] >= 2
    first = status["failedSubtasks"][0]
    assert first["exitCode"] == 3 and first["message"] == f"boom {first['index']}"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "TooManyFailures"
    # Once over budget no new Job starts: far fewer than 20 were ever created.
    assert len(w.jobs("fp")) < 20


def test_failures_within_budget_succeed(w: Workloads) -> None:
    templates = {
        "default": {"podTemplate": pod_template({"KWOK_MESSAGE": '"ok"'})},
        "flaky": {"podTemplate": pod_template({"KWOK_OUTCOME": "fail", "KWOK_MESSAGE": "nope"})},
    }
    w.create(
        workload(
            "budget",
            {"items": [1, {"template": "flaky"}, 3]},
            templates=templates,
            failurePolicy={"maxFailedRatio": 0.5},
        )
    )
    done = w.wait_condition("budget", "Complete")
    assert done["status"]["counts"]["failed"] == 1 and done["status"]["counts"]["succeeded"] == 2
    assert "within spec.failurePolicy" in done["status"]["message"]


def test_retries_use_backoff_limit(w: Workloads) -> None:
    env = {"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "7", "KWOK_MESSAGE": "flaky"}
    templates = {"default": {"podTemplate": pod_template(env), "backoffLimit": 1}}
    w.create(workload("retry", {"range": {"end": 1}}, templates=templates))
    failed = w.wait_condition("retry", "Failed", timeout=180)
    entry = failed["status"]["failedSubtasks"][0]
    assert entry["reason"] == "BackoffLimitExceeded" and entry["exitCode"] == 7
    pods = w.core.list_namespaced_pod(w.ns, label_selector="batch.kubernetes.io/job-name=retry-0").items
    assert len(pods) == 2  # the first try and one retry


def test_a_final_failure_is_not_retried(w: Workloads) -> None:
    # What apwa.worker.fail(..., final=True) leaves: its envelope and exit code 86; the rendered
    # podFailurePolicy fails the Job at once, though backoffLimit would allow three more pods.
    message = '{"apwa":1,"error":"not a CSV file","final":true}'
    env = {"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "86", "KWOK_MESSAGE": message}
    templates = {"default": {"podTemplate": pod_template(env), "backoffLimit": 3}}
    w.create(workload("final", {"range": {"end": 1}}, templates=templates))
    failed = w.wait_condition("final", "Failed", timeout=180)
    entry = failed["status"]["failedSubtasks"][0]
    assert (entry["reason"], entry["message"], entry["exitCode"]) == ("Final", "not a CSV file", 86)
    job = w.batch.read_namespaced_job("final-0", w.ns)
    assert any(c.type == "Failed" and c.reason == "PodFailurePolicy" for c in job.status.conditions)
    pods = w.core.list_namespaced_pod(w.ns, label_selector="batch.kubernetes.io/job-name=final-0").items
    assert len(pods) == 1  # no retry
    assert entry["failedPods"] == 1


def test_a_template_failjob_rule_fails_at_once_despite_backoff_limit(w: Workloads) -> None:
    # The template's own podFailurePolicy, behind the operator's rule for 86: exit code 42 is final too.
    env = {"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "42", "KWOK_MESSAGE": "quota exhausted"}
    rules = [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}]
    templates = {"default": {"podTemplate": pod_template(env), "backoffLimit": 3, "podFailurePolicy": {"rules": rules}}}
    w.create(workload("failjob", {"range": {"end": 1}}, templates=templates))
    failed = w.wait_condition("failjob", "Failed", timeout=180)
    entry = failed["status"]["failedSubtasks"][0]
    assert (entry["reason"], entry["exitCode"], entry["failedPods"]) == ("PodFailurePolicy", 42, 1)
    job = w.batch.read_namespaced_job("failjob-0", w.ns)
    assert [r["action"] for r in job.to_dict()["spec"]["pod_failure_policy"]["rules"]] == ["FailJob", "FailJob"]
    pods = w.core.list_namespaced_pod(w.ns, label_selector="batch.kubernetes.io/job-name=failjob-0").items
    assert len(pods) == 1


def test_an_ignored_failure_is_retried_without_counting(w: Workloads) -> None:
    # kwok can only fail with an exit code (no DisruptionTarget condition), so the disruption is an
    # exit code the template Ignores. backoffLimit 0 allows one pod; Ignore gives more, none counted.
    env = {"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "137", "KWOK_MESSAGE": "evicted"}
    rules = [
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [137]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
    templates = {"default": {"podTemplate": pod_template(env), "backoffLimit": 0, "podFailurePolicy": {"rules": rules}}}
    w.create(workload("ignored", {"range": {"end": 1}}, templates=templates))
    selector = "batch.kubernetes.io/job-name=ignored-0"

    def retried() -> list[Any] | None:
        pods = w.core.list_namespaced_pod(w.ns, label_selector=selector).items
        return pods if sum(p.status.phase == "Failed" for p in pods) >= 3 else None

    wait_for(retried, 180, "three failed pods of ignored-0 (backoffLimit 0 allows one)")
    job = w.batch.read_namespaced_job("ignored-0", w.ns)
    assert not job.status.failed  # nothing counted against backoffLimit
    assert not any(c.type == "Failed" and c.status == "True" for c in job.status.conditions or [])
    assert w.get("ignored")["status"]["counts"]["failed"] == 0


def test_suspend_and_resume(w: Workloads) -> None:
    w.create(workload("sus", {"range": {"end": 6}}, {"KWOK_DELAY_MS": "200"}, suspend=True))
    w.wait_phase("sus", "Suspended")
    assert w.jobs("sus") == []
    w.patch("sus", {"suspend": False})
    done = w.wait_condition("sus", "Complete")
    assert done["status"]["counts"]["succeeded"] == 6


def test_suspend_running_jobs(w: Workloads) -> None:
    # KWOK_OUTCOME=hold keeps pods Running until the test is over.
    w.create(workload("hold", {"range": {"end": 10}}, {"KWOK_OUTCOME": "hold"}, parallelism=3))
    wait_for(lambda: len(w.jobs("hold")) == 3, 60, "3 active Jobs")
    w.patch("hold", {"suspend": True})
    w.wait_phase("hold", "Suspended")
    wait_for(lambda: all(j.spec.suspend for j in w.jobs("hold")), 60, "every active Job suspended")
    w.patch("hold", {"suspend": False, "parallelism": 5})
    wait_for(
        lambda: len(w.jobs("hold")) == 5 and not any(j.spec.suspend for j in w.jobs("hold")),
        60,
        "Jobs resumed and the window grown to the new parallelism",
    )
    assert w.wait_phase("hold", "Running")["status"]["observedGeneration"] == 3


def watch_jobs(api: client.ApiClient, namespace: str, stop: threading.Event, events: list[tuple[str, Any]]) -> None:
    batch = client.BatchV1Api(api)
    for ev in watch.Watch().stream(batch.list_namespaced_job, namespace, timeout_seconds=300):
        events.append((ev["type"], ev["object"]))
        if stop.is_set():
            return


def test_parallelism_is_a_sliding_window_never_exceeded(api: client.ApiClient, w: Workloads) -> None:
    events: list[tuple[str, Any]] = []
    stop = threading.Event()
    t = threading.Thread(target=watch_jobs, args=(api, w.ns, stop, events), daemon=True)
    t.start()
    w.create(workload("win", {"range": {"end": 40}}, {"KWOK_DELAY_MS": "300"}, parallelism=5))
    w.wait_condition("win", "Complete")
    stop.set()
    active: set[str] = set()
    peak = 0
    for kind, job in events:
        finished = any(c.status == "True" and c.type in ("Complete", "Failed") for c in job.status.conditions or [])
        if kind == "DELETED" or finished:
            active.discard(job.metadata.name)
        else:
            active.add(job.metadata.name)
        peak = max(peak, len(active))
    assert peak <= 5, f"{peak} Jobs were active at once with parallelism 5"
    assert peak == 5, "the window never filled"


def test_delete_cascades(w: Workloads) -> None:
    w.create(workload("gone", {"range": {"end": 3}}))
    w.wait_condition("gone", "Complete")
    net = client.NetworkingV1Api(w.co.api_client)
    assert w.jobs("gone") and w.results("gone") and net.list_namespaced_network_policy(w.ns).items
    w.delete("gone")
    wait_for(
        lambda: not w.jobs("gone") and not w.results("gone") and not net.list_namespaced_network_policy(w.ns).items,
        90,
        "Jobs, result ConfigMaps and the NetworkPolicy garbage-collected",
    )


def test_ttl_applies_only_after_the_result_is_stored(w: Workloads) -> None:
    templates = {
        "default": {"podTemplate": pod_template({"KWOK_MESSAGE": "{{ index }}"}), "ttlSecondsAfterFinished": 0}
    }
    w.create(workload("ttl", {"range": {"end": 8}}, templates=templates, parallelism=4))
    done = w.wait_condition("ttl", "Complete")
    assert done["status"]["counts"]["succeeded"] == 8
    assert {i: e["result"] for i, e in w.results("ttl").items()} == {i: i for i in range(8)}
    wait_for(lambda: not w.jobs("ttl"), 90, "finished Jobs removed by their TTL")


# An operator killed mid-run, in both execution modes: tests/integration/test_packed.py.


def test_thousand_subtasks(w: Workloads) -> None:
    w.create(
        workload("k", {"range": {"end": 1000}}, {"KWOK_DELAY_MS": "50", "KWOK_MESSAGE": "{{ index }}"}, parallelism=100)
    )
    done = w.wait_condition("k", "Complete", timeout=600)
    status = done["status"]
    assert status["counts"]["succeeded"] == 1000 and status["resultsRef"]["chunks"] == 5
    assert len(w.results("k")) == 1000
    assert len(json.dumps(status)) < 16 * 1024


def test_crd_rejects_invalid_specs(w: Workloads) -> None:
    bad = workload("bad", {"range": {"start": 5, "end": 2}, "shards": {"count": 2}}, parallelism=0)
    bad["spec"]["results"] = {"reduce": {"template": "nope"}}
    with pytest.raises(client.ApiException) as e:
        w.create(bad)
    text = e.value.body
    assert e.value.status == 422
    for needle in [
        "spec.parallelism",
        "exactly one of",
        "range.end must be greater than range.start",
        "results.reduce.template names a template",
    ]:
        assert needle in text
    w.create(workload("ok", {"items": [1, 2]}))
    with pytest.raises(client.ApiException, match="decomposition is immutable"):
        w.patch("ok", {"decomposition": {"items": [1, 2, 3]}})


def test_kubectl_get_columns(w: Workloads) -> None:
    w.create(workload("cols", {"range": {"end": 2}}))
    w.wait_condition("cols", "Complete")
    out = subprocess.run(["kubectl", "get", "pwl", "-n", w.ns], capture_output=True, text=True, check=True).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "FAILED", "AGE"]
    assert row.split()[:4] == ["cols", "Succeeded", "2/2", "0"]
    subprocess.run(["kubectl", "wait", "-n", w.ns, "--for=condition=Complete", "pwl/cols", "--timeout=10s"], check=True)


def test_edit_after_completion_is_observed_and_ttl_deletes(w: Workloads) -> None:
    w.create(workload("fin", {"range": {"end": 2}}, ttlSecondsAfterFinished=3))
    w.wait_condition("fin", "Complete")
    w.patch("fin", {"parallelism": 7})
    observed = wait_for(
        lambda: (x := w.get("fin"))["status"].get("observedGeneration") == 2 and x, 30, "generation 2 observed"
    )
    assert all(c["observedGeneration"] == 2 for c in observed["status"]["conditions"])
    assert observed["status"]["phase"] == "Succeeded"

    def gone() -> bool:
        try:
            w.get("fin")
        except client.ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, 60, "workload deleted by spec.ttlSecondsAfterFinished")


def test_apwa_results_command(w: Workloads) -> None:
    templates = {
        "default": {"podTemplate": pod_template({"KWOK_MESSAGE": '{"i": {{ index }}}'})},
        "bad": {"podTemplate": pod_template({"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "2", "KWOK_MESSAGE": "no"})},
    }
    w.create(
        workload(
            "res", {"items": [0, {"template": "bad"}, 2]}, templates=templates, failurePolicy={"maxFailedSubtasks": 1}
        )
    )
    w.wait_condition("res", "Complete")
    apwa = str(Path(sys.executable).parent / "apwa")
    out = subprocess.run([apwa, "results", "res", "-n", w.ns], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [
        {"index": 0, "succeeded": True, "result": {"i": 0}},
        {"index": 1, "succeeded": False, "reason": "BackoffLimitExceeded", "message": "no", "exitCode": 2},
        {"index": 2, "succeeded": True, "result": {"i": 2}},
    ]
    lines = subprocess.run(
        [apwa, "results", "res", "-n", w.ns, "-o", "jsonl", "--succeeded-only"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 2]
    missing = subprocess.run([apwa, "results", "nope", "-n", w.ns], capture_output=True, text=True)
    assert missing.returncode == 1 and "ParallelWorkload 'nope' not found" in missing.stderr


def test_job_quota_is_waited_out(w: Workloads) -> None:
    """A ResourceQuota refusing Jobs (403) is reported and retried; TTL'd Jobs free the quota."""
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="jobs"), spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "3"})
    )
    w.core.create_namespaced_resource_quota(w.ns, quota)
    wait_for(
        lambda: (w.core.read_namespaced_resource_quota_status("jobs", w.ns).status.hard or {}).get("count/jobs.batch"),
        30,
        "the quota to be active",
    )
    templates = {
        "default": {"podTemplate": pod_template({"KWOK_MESSAGE": "{{ index }}"}), "ttlSecondsAfterFinished": 0}
    }
    w.create(workload("quota", {"range": {"end": 8}}, templates=templates, parallelism=5))
    done = w.wait_condition("quota", "Complete", timeout=240)
    assert done["status"]["counts"]["succeeded"] == 8
    assert {i: e["result"] for i, e in w.results("quota").items()} == {i: i for i in range(8)}
    events = w.core.list_namespaced_event(w.ns, field_selector="involvedObject.name=quota").items
    assert any(e.reason == "Forbidden" and "exceeded quota" in e.message for e in events)


def test_a_null_item_runs_and_leaves_the_workload_writable(w: Workloads) -> None:
    # Found by the fuzz test: without `nullable` on the items' schema, the API server stored a null
    # item and then refused every later write (status too) evaluating the decomposition's CEL rule.
    w.create(workload("nul", {"items": [1, None]}, {"KWOK_MESSAGE": "{{ item }}"}))
    done = w.wait_condition("nul", "Complete")
    assert done["status"]["counts"] == all_succeeded(2)
    assert {i: e["result"] for i, e in w.results("nul").items()} == {0: 1, 1: None}
