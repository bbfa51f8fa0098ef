"""Both execution modes through the same behaviours, on the real control plane (kwok plays the pods).

`jobs`: one Job per subtask; `packed`: chunks of subtasks as the indexes of Indexed Jobs
(spec.execution.mode Packed). Each test runs in both and asserts the same per-subtask outcome:
results, failures with their exit codes and messages, per-subtask retries, final failures,
the reduce, suspend, the window, retries of failed subtasks, and an operator killed mid-run.

Per-subtask outcomes come from env KWOK_<NAME>_<i> (testenv/kwok-stages.yaml): packed pods share
one pod template, so `{{ index }}` placeholders can't give them their own values, while kwok
maps a packed pod to its subtask through the chunk's apwa.dev/indices annotation.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pytest
from helpers import wait_for
from kubernetes import client, watch
from operator_proc import OperatorProcess
from workloads import Workloads, all_succeeded, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")

CHUNK = 4
PACKED = pytest.param({"mode": "Packed", "chunkSize": CHUNK}, id="packed")
# Mode Jobs of these behaviours is what test_operator.py proves in CI already; its twins here run in
# `make test-slow` (CI's cold budget), except the operator-killed case, which is only here.
MODES = [pytest.param(None, id="jobs", marks=pytest.mark.slow), PACKED]
BOTH_MODES_IN_CI = [pytest.param(None, id="jobs"), PACKED]


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


def per_index(name: str, values: dict[int, Any]) -> dict[str, str]:
    return {f"KWOK_{name}_{i}": str(v) for i, v in values.items()}


def run(name: str, n: int, env: dict[str, str], execution: dict[str, Any] | None, **spec: Any) -> dict[str, Any]:
    body = workload(name, {"range": {"end": n}}, env, **spec)
    if execution is not None:
        body["spec"]["execution"] = execution
    return body


def pods_of(w: Workloads, name: str) -> list[client.V1Pod]:
    return w.core.list_namespaced_pod(w.ns, label_selector=f"apwa.dev/workload={name},apwa.dev/role=subtask").items


def subtask_of(pod: client.V1Pod) -> int:
    annotations = pod.metadata.annotations or {}
    if "apwa.dev/indices" in annotations:
        ranges = [tuple(map(int, (p.split("-") * 2)[:2])) for p in annotations["apwa.dev/indices"].split(",")]
        indices = [i for a, b in ranges for i in range(a, b + 1)]
        return indices[int(annotations["batch.kubernetes.io/job-completion-index"])]
    return int(pod.metadata.labels["apwa.dev/index"])


@pytest.mark.parametrize("execution", MODES)
def test_results_and_reduce(w: Workloads, execution: dict[str, Any] | None) -> None:
    n = 10
    env = per_index("MESSAGE", {i: f'{{"sq":{i * i}}}' for i in range(n)})
    body = run("res", n, env, execution, parallelism=6, results={"reduce": {"template": "sum"}})
    body["spec"]["templates"]["sum"] = {"podTemplate": pod_template({"KWOK_MESSAGE": '"reduced"'})}
    w.create(body)
    done = w.wait_condition("res", "Complete")
    assert done["status"]["counts"] == all_succeeded(n)
    assert done["status"]["result"] == "reduced"
    assert {i: e["result"] for i, e in w.results("res").items()} == {i: {"sq": i * i} for i in range(n)}
    expected_jobs = n if execution is None else -(-n // CHUNK)
    assert len(w.jobs("res")) == expected_jobs + 1  # and the reduce


@pytest.mark.parametrize("execution", MODES)
def test_failures_keep_exit_codes_messages_and_per_subtask_retries(
    w: Workloads, execution: dict[str, Any] | None
) -> None:
    n, failing = 8, {2: 3, 5: 4}
    env = {
        **per_index("OUTCOME", dict.fromkeys(failing, "fail")),
        **per_index("EXIT_CODE", failing),
        **per_index("MESSAGE", {i: f"boom {i}" if i in failing else str(i) for i in range(n)}),
    }
    body = run("fails", n, env, execution, parallelism=8, failurePolicy={"maxFailedSubtasks": 2})
    body["spec"]["templates"]["default"]["backoffLimit"] = 1
    w.create(body)
    done = w.wait_condition("fails", "Complete", timeout=180)
    status = done["status"]
    assert status["counts"]["succeeded"] == n - 2 and status["counts"]["failed"] == 2
    got = {f["index"]: (f["reason"], f["exitCode"], f["message"]) for f in status["failedSubtasks"]}
    assert got == {i: ("BackoffLimitExceeded", code, f"boom {i}") for i, code in failing.items()}
    results = {i: e.get("result") for i, e in w.results("fails").items() if e.get("succeeded", True)}
    assert {i: results[i] for i in range(n) if i not in failing} == {i: i for i in range(n) if i not in failing}
    per_subtask: dict[int, int] = defaultdict(int)
    for pod in pods_of(w, "fails"):
        per_subtask[subtask_of(pod)] += 1
    assert per_subtask == {i: 2 if i in failing else 1 for i in range(n)}  # one retry each, only where it failed


@pytest.mark.parametrize("execution", MODES)
def test_a_final_failure_fails_only_its_subtask_at_once(w: Workloads, execution: dict[str, Any] | None) -> None:
    n = 6
    final = '{"apwa":1,"error":"not a CSV file","final":true}'
    env = {"KWOK_OUTCOME_1": "fail", "KWOK_EXIT_CODE_1": "86", "KWOK_MESSAGE_1": final}
    body = run("final", n, env, execution, parallelism=6, failurePolicy={"maxFailedSubtasks": 1})
    body["spec"]["templates"]["default"]["backoffLimit"] = 3
    w.create(body)
    done = w.wait_condition("final", "Complete", timeout=180)
    assert done["status"]["counts"]["succeeded"] == n - 1
    entry = done["status"]["failedSubtasks"][0]
    assert (entry["index"], entry["reason"], entry["message"], entry["exitCode"]) == (1, "Final", "not a CSV file", 86)
    assert sum(1 for p in pods_of(w, "final") if subtask_of(p) == 1) == 1  # no retry for a final failure


@pytest.mark.parametrize("execution", MODES)
def test_suspend_holds_every_running_subtask_and_resume_finishes(
    w: Workloads, execution: dict[str, Any] | None
) -> None:
    n = 12
    w.create(run("hold", n, {"KWOK_DELAY_MS": "5000"}, execution, parallelism=8))
    wait_for(lambda: len(pods_of(w, "hold")) >= 8, 60, "8 subtask pods")
    w.patch("hold", {"suspend": True})
    w.wait_phase("hold", "Suspended")
    wait_for(lambda: all(j.spec.suspend for j in unfinished_jobs(w, "hold")), 60, "every unfinished Job suspended")
    assert unfinished_jobs(w, "hold"), "nothing left running to suspend: the subtasks were too quick"
    w.patch("hold", {"suspend": False})
    done = w.wait_condition("hold", "Complete", timeout=180)
    assert done["status"]["counts"] == all_succeeded(n)


def unfinished_jobs(w: Workloads, name: str) -> list[client.V1Job]:
    def done(j: client.V1Job) -> bool:
        return any(c.type in ("Complete", "Failed") and c.status == "True" for c in j.status.conditions or [])

    return [j for j in w.jobs(name) if not done(j)]


def watch_pods(api: client.ApiClient, namespace: str, stop: threading.Event, events: list[client.V1Pod]) -> None:
    core = client.CoreV1Api(api)
    for ev in watch.Watch().stream(core.list_namespaced_pod, namespace, timeout_seconds=300):
        events.append(ev["object"] if ev["type"] != "DELETED" else None)
        if stop.is_set():
            return


@pytest.mark.parametrize("execution", MODES)
def test_the_window_bounds_running_subtasks(
    api: client.ApiClient, w: Workloads, execution: dict[str, Any] | None
) -> None:
    events: list[client.V1Pod] = []
    stop = threading.Event()
    threading.Thread(target=watch_pods, args=(api, w.ns, stop, events), daemon=True).start()
    n, window = 32, 8
    w.create(run("win", n, {"KWOK_DELAY_MS": "300"}, execution, parallelism=window))
    done = w.wait_condition("win", "Complete", timeout=180)
    stop.set()
    assert done["status"]["counts"] == all_succeeded(n)
    unfinished: set[str] = set()
    peak = 0
    for pod in events:
        if pod is None:
            continue
        if pod.status.phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp:
            unfinished.discard(pod.metadata.name)
        else:
            unfinished.add(pod.metadata.name)
        peak = max(peak, len(unfinished))
    assert peak <= window, f"{peak} subtask pods unfinished at once with parallelism {window}"
    assert peak >= window // 2, f"the window never filled (peak {peak})"


@pytest.mark.parametrize("execution", MODES)
def test_retry_runs_only_the_failures_again(w: Workloads, execution: dict[str, Any] | None) -> None:
    n = 8
    env = {
        **per_index("OUTCOME", {3: "fail", 6: "fail"}),
        "KWOK_RETRY_OUTCOME": "succeed",
        **per_index("MESSAGE", {i: str(i) for i in range(n)}),
    }
    w.create(run("again", n, env, execution, parallelism=8))
    failed = w.wait_condition("again", "Failed", timeout=180)
    assert sorted(f["index"] for f in failed["status"]["failedSubtasks"]) == [3, 6]
    before = {i: e for i, e in w.results("again").items() if i not in (3, 6)}
    w.patch("again", {"retry": {"attempt": 1}})
    done = w.wait_condition("again", "Complete", timeout=180)
    assert done["status"]["counts"] == all_succeeded(n)
    after = w.results("again")
    assert {i: after[i] for i in before} == before  # the successes untouched
    assert {after[i]["result"] for i in (3, 6)} == {3, 6}


def watch_jobs(api: client.ApiClient, namespace: str, stop: threading.Event, uids: dict[str, set[str]]) -> None:
    batch = client.BatchV1Api(api)
    for ev in watch.Watch().stream(batch.list_namespaced_job, namespace, timeout_seconds=300):
        uids[ev["object"].metadata.name].add(ev["object"].metadata.uid)
        if stop.is_set():
            return


@pytest.mark.parametrize("execution", BOTH_MODES_IN_CI)
def test_operator_killed_mid_run_loses_and_duplicates_nothing(
    api: client.ApiClient, w: Workloads, operator: OperatorProcess, execution: dict[str, Any] | None
) -> None:
    uids: dict[str, set[str]] = defaultdict(set)
    stop = threading.Event()
    threading.Thread(target=watch_jobs, args=(api, w.ns, stop, uids), daemon=True).start()
    n = 96
    env = {"KWOK_DELAY_MS": "300", **per_index("MESSAGE", {i: str(i) for i in range(n)})}
    w.create(run("crash", n, env, execution, parallelism=16))
    wait_for(
        lambda: (w.get("crash").get("status") or {}).get("counts", {}).get("succeeded", 0) >= 20,
        120,
        "20 subtasks done before the crash",
    )
    operator.kill()
    operator.start()
    done = w.wait_condition("crash", "Complete", timeout=240)
    stop.set()
    assert done["status"]["counts"] == all_succeeded(n)
    assert {i: e["result"] for i, e in w.results("crash").items()} == {i: i for i in range(n)}
    duplicated = {name: u for name, u in uids.items() if len(u) > 1}
    assert not duplicated, f"Jobs created twice: {duplicated}"
    ones = [p for p in pods_of(w, "crash") if p.status.phase == "Succeeded"]
    assert sorted(subtask_of(p) for p in ones) == list(range(n))  # one succeeded pod per subtask


def test_packed_refuses_per_subtask_placeholders_with_the_field(w: Workloads) -> None:
    body = run("ph", 3, {"KWOK_MESSAGE": "{{ item }}"}, {"mode": "Packed", "chunkSize": 2})
    w.create(body)
    stalled = w.wait_condition("ph", "Stalled")
    c = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
    assert c["reason"] == "InvalidTemplate"
    assert "spec.templates.default.podTemplate.spec.containers[0]" in c["message"]
    assert "APWA_PLAN_PATH" in c["message"] or "/apwa/plan/plan.jsonl" in c["message"]
    assert w.jobs("ph") == []
