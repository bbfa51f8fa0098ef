"""Retrying failed subtasks on the real control plane: only the failures run again (as new Jobs
named for the attempt), the successes and their stored results stay untouched, the status goes
back to Running and ends with counts that add up, an operator restart in the middle changes
nothing, and the same request applied twice runs once.

kwok plays the pods: KWOK_OUTCOME=fail fails the first attempt, KWOK_RETRY_OUTCOME decides the
retry's pods (label apwa.dev/attempt; testenv/kwok-stages.yaml)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for
from kubernetes import client, watch
from operator_proc import OperatorProcess
from workloads import GROUP, PLURAL, VERSION, Workloads, all_succeeded, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")

ITEMS = [0, {"template": "flaky"}, 2, {"template": "flaky"}, 4]  # subtasks 1 and 3 fail at first
FAILED_AT_FIRST = [1, 3]


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


def flaky(name: str, retry_outcome: str = "succeed", delay_ms: str = "100", **spec: Any) -> dict[str, Any]:
    templates = {
        "default": {"podTemplate": pod_template({"KWOK_MESSAGE": '"ok {{ index }}"'})},
        "flaky": {
            "podTemplate": pod_template(
                {
                    "KWOK_OUTCOME": "fail",
                    "KWOK_RETRY_OUTCOME": retry_outcome,
                    "KWOK_EXIT_CODE": "3",
                    "KWOK_MESSAGE": "boom {{ index }}",
                    "KWOK_DELAY_MS": delay_ms,
                }
            )
        },
    }
    return workload(name, {"items": ITEMS}, templates=templates, parallelism=5, **spec)


class PhaseWatch:
    """Every phase the workload's status passes through, from a watch (a poll could miss a short one)."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.phases: list[str] = []
        self._stop = threading.Event()
        self._args = (api, namespace, name)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        api, namespace, name = self._args
        co = client.CustomObjectsApi(api)
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                co.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                timeout_seconds=5,
            )
            for event in stream:
                phase = (event["object"].get("status") or {}).get("phase")
                if phase and (not self.phases or self.phases[-1] != phase):
                    self.phases.append(phase)
                if self._stop.is_set():
                    break

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.phases


@pytest.fixture
def phases(api: client.ApiClient, namespace: str) -> Iterator[Any]:
    watches: list[PhaseWatch] = []

    def start(name: str) -> PhaseWatch:
        watches.append(PhaseWatch(api, namespace, name))
        return watches[-1]

    yield start
    for pw in watches:
        pw.stop()


def failed_first(w: Workloads, name: str) -> dict[str, Any]:
    done = wait_for(
        lambda: (s := w.get(name).get("status") or {}).get("phase") == "Failed" and s.get("completionTime") and s,
        120,
        f"{name} Failed (now: {w.describe(name)})",
    )
    assert [f["index"] for f in done["failedSubtasks"]] == FAILED_AT_FIRST
    return done


def job_uids(w: Workloads, name: str) -> dict[str, str]:
    return {j.metadata.name: j.metadata.uid for j in w.jobs(name)}


def counts_add_up(status: dict[str, Any]) -> bool:
    c = status["counts"]
    return c["total"] == c["pending"] + c["active"] + c["succeeded"] + c["failed"]


def test_retry_runs_only_the_failures_and_ends_succeeded(w: Workloads, phases: Any) -> None:
    w.create(flaky("rt"))
    failed_first(w, "rt")
    before_results, before_jobs = w.results("rt"), job_uids(w, "rt")
    seen = phases("rt")
    w.patch("rt", {"retry": {"attempt": 1}})
    done = w.wait_condition("rt", "Complete")["status"]
    assert seen.stop()[-2:] == ["Running", "Succeeded"]
    assert done["counts"] == all_succeeded(5)
    assert "failedSubtasks" not in done and done["retry"]["attempt"] == 1
    (round1,) = done["retry"]["history"]
    assert round1["retried"] == 2 and [f["index"] for f in round1["failures"]] == FAILED_AT_FIRST
    assert round1["failures"][0]["message"] == "boom 1" and round1["failures"][0]["exitCode"] == 3
    after_results, after_jobs = w.results("rt"), job_uids(w, "rt")
    # The successes are untouched: same stored outcomes, same Jobs (not created again).
    assert {i: after_results[i] for i in (0, 2, 4)} == {i: before_results[i] for i in (0, 2, 4)}
    assert {n: after_jobs[n] for n in ("rt-0", "rt-2", "rt-4")} == {n: before_jobs[n] for n in ("rt-0", "rt-2", "rt-4")}
    # The failures ran again as new Jobs named for the attempt; the first attempt's stay as they were.
    assert set(after_jobs) == set(before_jobs) | {"rt-1-r1", "rt-3-r1"}
    assert {n: after_jobs[n] for n in ("rt-1", "rt-3")} == {n: before_jobs[n] for n in ("rt-1", "rt-3")}
    assert after_results[1]["ok"] is True and after_results[3]["ok"] is True
    assert [r["index"] for r in done["result"]] == [0, 1, 2, 3, 4]


def test_retry_survives_an_operator_restart_before_it_completes(
    w: Workloads, operator: OperatorProcess, phases: Any
) -> None:
    w.create(flaky("rr", delay_ms="3000"))
    failed_first(w, "rr")
    seen = phases("rr")
    w.patch("rr", {"retry": {"attempt": 1}})
    wait_for(lambda: "Running" in seen.phases, 60, "rr back to Running")
    operator.kill()  # the retry's Jobs are running (3 s each); the operator is gone
    operator.start()
    done = w.wait_condition("rr", "Complete", timeout=180)["status"]
    assert done["counts"] == all_succeeded(5)
    names = sorted(job_uids(w, "rr"))
    assert names == ["rr-0", "rr-1", "rr-1-r1", "rr-2", "rr-3", "rr-3-r1", "rr-4"]  # none created twice
    assert len(done["retry"]["history"]) == 1


def test_a_retry_requested_while_the_operator_is_down_runs_when_it_returns(
    w: Workloads, operator: OperatorProcess
) -> None:
    w.create(flaky("rd"))
    failed_first(w, "rd")
    operator.kill()
    try:
        w.patch("rd", {"retry": {"attempt": 1}})
    finally:
        operator.start()
    done = w.wait_condition("rd", "Complete")["status"]
    assert done["counts"]["succeeded"] == 5 and done["retry"]["history"][0]["retried"] == 2


def test_the_same_retry_applied_twice_runs_once_and_a_new_attempt_runs_again(w: Workloads) -> None:
    w.create(flaky("ri", retry_outcome="fail"))  # the retry fails too
    failed_first(w, "ri")
    w.patch("ri", {"retry": {"attempt": 1}})
    w.patch("ri", {"retry": {"attempt": 1}})  # applied again before the operator acted: no change
    again = wait_for(
        lambda: (
            (s := w.get("ri").get("status") or {}).get("retry", {}).get("attempt") == 1
            and s.get("completionTime")
            and s
        ),
        120,
        "ri's retry 1 finished",
    )
    assert again["phase"] == "Failed" and [f["job"] for f in again["failedSubtasks"]] == ["ri-1-r1", "ri-3-r1"]
    jobs_after_first = job_uids(w, "ri")
    # GitOps re-applies the manifest with another edit: the generation moves, the retry does not.
    generation = w.patch("ri", {"parallelism": 4, "retry": {"attempt": 1}})["metadata"]["generation"]
    wait_for(lambda: w.get("ri")["status"].get("observedGeneration") == generation, 60, "the edit observed")
    status = w.get("ri")["status"]
    assert job_uids(w, "ri") == jobs_after_first and len(status["retry"]["history"]) == 1
    assert status["phase"] == "Failed" and status["completionTime"] == again["completionTime"]
    w.patch("ri", {"retry": {"attempt": 2}})
    wait_for(lambda: {"ri-1-r2", "ri-3-r2"} <= set(job_uids(w, "ri")), 60, "attempt 2's Jobs")
    final = wait_for(
        lambda: (s := w.get("ri")["status"]).get("retry", {}).get("attempt") == 2 and s.get("completionTime") and s,
        120,
        "ri's retry 2 finished",
    )
    assert counts_add_up(final) and final["counts"]["failed"] == 2
    assert [r["attempt"] for r in final["retry"]["history"]] == [1, 2]


def test_retry_of_failures_within_budget_reduces_again(w: Workloads) -> None:
    body = flaky("rx", failurePolicy={"maxFailedSubtasks": 2}, results={"reduce": {"template": "sum"}})
    body["spec"]["templates"]["sum"] = {"podTemplate": pod_template({"KWOK_MESSAGE": '"reduced"'})}
    w.create(body)
    first = w.wait_condition("rx", "Complete")["status"]
    assert first["counts"]["failed"] == 2
    first_input = json.loads(w.core.read_namespaced_config_map("rx-reduce-input", w.ns).data["results.json"])
    assert first_input["failed"] == FAILED_AT_FIRST
    w.patch("rx", {"retry": {"attempt": 1}})
    wait_for(lambda: "rx-reduce-r1" in job_uids(w, "rx"), 60, "the retry's reduce Job")
    done = w.wait_condition("rx", "Complete")["status"]
    assert done["counts"]["failed"] == 0 and done["result"] == "reduced"
    second = json.loads(w.core.read_namespaced_config_map("rx-reduce-input-r1", w.ns).data["results.json"])
    assert second["failed"] == [] and [r["index"] for r in second["results"]] == [0, 1, 2, 3, 4]
