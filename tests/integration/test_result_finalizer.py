"""A result is never lost silently: subtask and reduce pods hold the apwa.dev/result finalizer until
the operator has stored their outcome, and no pod is ever left stuck by it (kwok finishes the pods;
its pod-delete stage deletes, it does not strip finalizers, so a held pod stays Terminating here
as it would on a kubelet)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import wait_for
from kubernetes import client
from operator_proc import OperatorProcess
from workloads import Workloads, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")
FINALIZER = "apwa.dev/result"
# A pod kwok never finishes: its subtask stays active, and so its workload keeps running.
HANG = {"KWOK_OUTCOME": "hang"}


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


def pods(w: Workloads, name: str | None = None) -> list[client.V1Pod]:
    selector = f"apwa.dev/workload={name}" if name else "app.kubernetes.io/managed-by=apwa"
    return w.core.list_namespaced_pod(w.ns, label_selector=selector).items


def held(p: client.V1Pod) -> bool:
    return FINALIZER in (p.metadata.finalizers or [])


def describe(items: list[client.V1Pod]) -> str:
    return ", ".join(
        f"{p.metadata.name} {p.status.phase}{' deleting' if p.metadata.deletion_timestamp else ''} "
        f"{p.metadata.finalizers}"
        for p in items
    )


def mixed(name: str, quick: int, hanging: int, **spec: Any) -> dict[str, Any]:
    """`quick` subtasks that succeed at once, then `hanging` ones that run until deleted."""
    items: list[Any] = [{"n": i} for i in range(quick)] + [{"template": "hang", "n": quick + i} for i in range(hanging)]
    templates = {
        "default": {"podTemplate": pod_template({"KWOK_MESSAGE": "{{ item.n }}"})},
        "hang": {"podTemplate": pod_template(HANG)},
    }
    return workload(name, {"items": items}, templates=templates, parallelism=quick + hanging, **spec)


def succeeded(w: Workloads, name: str) -> int:
    return int((w.get(name).get("status") or {}).get("counts", {}).get("succeeded", 0))


def wait_no_pods(w: Workloads, timeout: float = 90) -> None:
    wait_for(lambda: not pods(w), timeout, f"every pod gone, none stuck Terminating (left: {describe(pods(w))})")


def test_pods_of_a_finished_workload_are_released_and_collectable(w: Workloads) -> None:
    templates = {
        "default": {"podTemplate": pod_template({"KWOK_MESSAGE": "{{ index }}"}), "ttlSecondsAfterFinished": 0},
        "sum": {"podTemplate": pod_template({"KWOK_MESSAGE": '"reduced"'})},
    }
    body = workload(
        "fin", {"range": {"end": 6}}, templates=templates, parallelism=3, results={"reduce": {"template": "sum"}}
    )
    w.create(body)
    done = w.wait_condition("fin", "Complete")
    assert done["status"]["result"] == "reduced"
    assert {i: e["result"] for i, e in w.results("fin").items()} == {i: i for i in range(6)}
    # The subtask Jobs' TTL removes them, and the garbage collector their pods: nothing holds them.
    wait_for(
        lambda: [p for p in pods(w, "fin") if p.metadata.labels.get("apwa.dev/role") == "subtask"] == [],
        90,
        f"subtask pods deleted after their Jobs' TTL (left: {describe(pods(w, 'fin'))})",
    )
    wait_for(lambda: not any(held(p) for p in pods(w, "fin")), 30, f"the reduce pod released ({describe(pods(w))})")
    w.delete("fin")
    wait_no_pods(w)


def test_a_restart_between_storing_and_releasing_releases_the_pods(w: Workloads, operator: OperatorProcess) -> None:
    w.create(mixed("restart", quick=3, hanging=1))
    wait_for(lambda: succeeded(w, "restart") == 3, 60, "3 outcomes stored")
    quick = lambda: [p for p in pods(w, "restart") if p.status.phase == "Succeeded"]  # noqa: E731
    wait_for(lambda: len(quick()) == 3 and not any(held(p) for p in quick()), 30, "stored outcomes' pods released")
    (running,) = [p for p in pods(w, "restart") if p.status.phase == "Running"]
    assert held(running), "a running subtask's pod holds the finalizer"
    operator.kill()
    # The state a SIGKILL between storing the outcomes and releasing their pods leaves behind.
    for p in quick():
        w.core.patch_namespaced_pod(p.metadata.name, w.ns, {"metadata": {"finalizers": [FINALIZER]}})
    assert all(held(p) for p in quick())
    operator.start()
    wait_for(
        lambda: len(quick()) == 3 and not any(held(p) for p in quick()),
        60,
        f"pods of outcomes stored before the restart released ({describe(pods(w))})",
    )
    assert all(held(p) for p in pods(w, "restart") if p.status.phase == "Running"), "the running one is still held"
    assert succeeded(w, "restart") == 3
    w.delete("restart")
    wait_no_pods(w)


@pytest.mark.parametrize("operator_up", [pytest.param(True, id="operator-up"), pytest.param(False, id="operator-down")])
def test_a_workload_deleted_mid_run_leaves_no_pod_terminating(
    w: Workloads, operator: OperatorProcess, operator_up: bool
) -> None:
    w.create(mixed("midrun", quick=2, hanging=3))
    wait_for(lambda: succeeded(w, "midrun") == 2, 60, "2 outcomes stored")
    wait_for(lambda: sum(held(p) for p in pods(w, "midrun")) == 3, 30, "3 running pods, held")
    if not operator_up:
        operator.kill()
    try:
        w.delete("midrun")
        if not operator_up:
            # The garbage collector deletes the pods; held, they stay Terminating until released.
            wait_for(
                lambda: len(ps := pods(w)) == 3 and all(p.metadata.deletion_timestamp and held(p) for p in ps),
                90,
                f"the held pods Terminating while no operator runs ({describe(pods(w))})",
            )
    finally:
        if not operator_up:
            operator.start()
    wait_no_pods(w)
    assert not w.batch.list_namespaced_job(w.ns).items


def test_a_pod_removed_before_its_result_was_read_is_result_lost(w: Workloads, operator: OperatorProcess) -> None:
    w.create(workload("lost", {"range": {"end": 1}}, {"KWOK_DELAY_MS": "2000", "KWOK_MESSAGE": "42"}))
    wait_for(lambda: w.jobs("lost"), 30, "the subtask's Job created")
    operator.kill()
    try:
        complete = lambda: any(  # noqa: E731
            c.type == "Complete" and c.status == "True" for c in (w.jobs("lost")[0].status.conditions or [])
        )
        wait_for(complete, 60, "the Job Complete while no operator runs")
        (p,) = pods(w, "lost")
        assert held(p) and p.status.phase == "Succeeded"
        # Someone strips the finalizer and deletes the pod before any operator read it.
        strip = {"metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER]}}
        w.core.patch_namespaced_pod(p.metadata.name, w.ns, strip)
        w.core.delete_namespaced_pod(p.metadata.name, w.ns)
        wait_for(lambda: not pods(w, "lost"), 30, "the pod gone")
    finally:
        operator.start()
    failed = w.wait_condition("lost", "Failed", timeout=90)
    status = failed["status"]
    assert status["counts"]["succeeded"] == 0 and status["counts"]["failed"] == 1
    (entry,) = status["failedSubtasks"]
    assert entry["reason"] == "ResultLost", entry
    assert "succeeded but its pod was gone" in entry["message"]
    assert w.results("lost")[0]["reason"] == "ResultLost"
