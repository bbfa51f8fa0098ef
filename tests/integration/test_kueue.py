"""Kueue admits the subtask Jobs of a queued workload by quota (docs/kueue.md).

Kueue v0.17.0 runs as a host process beside the local control plane with its webhooks registered by
URL (hack/kueue.sh start; the fixture below starts it, idempotent). Each test gets its own
ResourceFlavor-backed ClusterQueue of 4 CPUs that admits only the test's namespace, and a LocalQueue
there; subtasks request 1 CPU each, so at most 4 may run whatever spec.parallelism says.

What is measured comes from a watch of the namespace's Jobs (every change, in resourceVersion order):
the peak of Jobs unsuspended and unfinished at once, and the peak of Jobs existing unfinished (the
window). Kueue releases quota only once a Job has its Complete condition, which the watch delivers
before the next Job's unsuspension, so the peak is exact, not sampled.
"""

from __future__ import annotations

import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, wait_for
from kubernetes import client, watch
from workloads import Workloads, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")

REPO = Path(__file__).resolve().parents[2]
KUEUE = ("kueue.x-k8s.io", "v1beta2")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
QUOTA_CPUS = 4
TIMEOUT = 180.0


@pytest.fixture(scope="session")
def kueue(cluster: Cluster) -> None:
    """Kueue for this session's cluster (APWA_CLUSTER_NAME, as hack/cluster.sh), with working webhooks."""
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "kueue.sh"), "start"], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/kueue.sh start failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", pytrace=False)


@pytest.fixture
def queue(kueue: None, api: client.ApiClient, namespace: str) -> Iterator[str]:
    """A LocalQueue in the test's namespace, backed by its own ClusterQueue of QUOTA_CPUS CPUs."""
    co = client.CustomObjectsApi(api)
    name = f"apwa-it-{uuid.uuid4().hex[:8]}"
    flavor = {"apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": name}}
    cq = {
        "apiVersion": "/".join(KUEUE),
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu"],
                    "flavors": [{"name": name, "resources": [{"name": "cpu", "nominalQuota": QUOTA_CPUS}]}],
                }
            ],
        },
    }
    lq = {
        "apiVersion": "/".join(KUEUE),
        "kind": "LocalQueue",
        "metadata": {"name": "team"},
        "spec": {"clusterQueue": name},
    }
    co.create_cluster_custom_object(*KUEUE, "resourceflavors", flavor)
    co.create_cluster_custom_object(*KUEUE, "clusterqueues", cq)
    co.create_namespaced_custom_object(*KUEUE, namespace, "localqueues", lq)
    wait_for(lambda: _active(co, name), 60, f"ClusterQueue {name} Active")
    try:
        yield name
    finally:
        # Kueue keeps its in-use finalizers until the namespace's Workloads are gone: don't wait.
        for plural in ("clusterqueues", "resourceflavors"):
            co.delete_cluster_custom_object(*KUEUE, plural, name, _request_timeout=30)


def _active(co: client.CustomObjectsApi, cq: str) -> bool:
    conditions = co.get_cluster_custom_object(*KUEUE, "clusterqueues", cq).get("status", {}).get("conditions") or []
    return any(c["type"] == "Active" and c["status"] == "True" for c in conditions)


class JobPeaks:
    """Watches a namespace's Jobs in a thread; keeps the peaks of unsuspended and of existing
    unfinished Jobs."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.batch, self.ns = client.BatchV1Api(api), namespace
        self.running: set[str] = set()
        self.unfinished: set[str] = set()
        self.peak_running = self.peak_unfinished = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> JobPeaks:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()

    def _watch(self) -> None:
        for ev in watch.Watch().stream(self.batch.list_namespaced_job, self.ns, timeout_seconds=600):
            self._apply(ev["type"], ev["object"])
            if self.stop.is_set():
                return

    def _apply(self, kind: str, job: client.V1Job) -> None:
        name = job.metadata.name
        finished = any(c.status == "True" and c.type in ("Complete", "Failed") for c in job.status.conditions or [])
        gone = kind == "DELETED" or finished
        (self.unfinished.discard if gone else self.unfinished.add)(name)
        (self.running.discard if gone or job.spec.suspend else self.running.add)(name)
        self.peak_running = max(self.peak_running, len(self.running))
        self.peak_unfinished = max(self.peak_unfinished, len(self.unfinished))


def cpu_template(delay_ms: int, priority_class: str | None = None) -> dict[str, Any]:
    pod = pod_template({"KWOK_DELAY_MS": str(delay_ms)})
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
    if priority_class:
        pod["spec"]["priorityClassName"] = priority_class
    return {"default": {"podTemplate": pod}}


def queued(body: dict[str, Any], queue: str = "team", **labels: str) -> dict[str, Any]:
    body["metadata"]["labels"] = {QUEUE_LABEL: queue, **labels}
    return body


def kueue_workloads(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    return client.CustomObjectsApi(api).list_namespaced_custom_object(*KUEUE, namespace, "workloads")["items"]


@pytest.fixture
def priority_class(api: client.ApiClient) -> Iterator[str]:
    name = f"apwa-it-{uuid.uuid4().hex[:8]}"
    sched = client.SchedulingV1Api(api)
    sched.create_priority_class(client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=1234))
    try:
        yield name
    finally:
        sched.delete_priority_class(name)


def test_quota_limits_admitted_subtasks_whatever_parallelism_says(
    api: client.ApiClient, namespace: str, queue: str, priority_class: str
) -> None:
    w = Workloads(api, namespace)
    n, parallelism = 12, 10
    body = workload(
        "quota", {"range": {"end": n}}, templates=cpu_template(2500, priority_class), parallelism=parallelism
    )
    with JobPeaks(api, namespace) as peaks:
        w.create(queued(body))
        # Ten Jobs exist, four admitted: six wait, and the status says so.
        waiting = wait_for(
            lambda: (
                (w.get("quota").get("status", {}).get("counts") or {}).get("awaitingAdmission", 0) > 0
                and w.get("quota")["status"]["counts"]
            ),
            TIMEOUT,
            f"subtasks awaiting admission in the status (now: {w.describe('quota')})",
        )
        assert waiting["active"] <= QUOTA_CPUS
        assert waiting["pending"] >= waiting["awaitingAdmission"]  # waiting counts as pending, not active
        # PriorityClass passes through to Kueue's Workload (its admission order and preemption).
        wls = wait_for(lambda: kueue_workloads(api, namespace), 60, "Kueue Workloads of the subtask Jobs")
        refs = {(r.get("kind"), r.get("name")) for r in (wl["spec"].get("priorityClassRef") or {} for wl in wls)}
        assert refs == {("PriorityClass", priority_class)}
        assert {wl["spec"].get("priority") for wl in wls} == {1234}
        done = w.wait_phase("quota", "Succeeded", TIMEOUT)
    assert done["status"]["counts"]["succeeded"] == n
    assert peaks.peak_running <= QUOTA_CPUS, f"{peaks.peak_running} subtask Jobs ran at once on {QUOTA_CPUS} CPUs"
    assert peaks.peak_running == QUOTA_CPUS, f"the quota was never filled (peak {peaks.peak_running})"
    # parallelism still bounds the Jobs that exist, admitted or not.
    assert parallelism >= peaks.peak_unfinished > QUOTA_CPUS


def test_control_without_the_queue_label_only_parallelism_limits(
    api: client.ApiClient, namespace: str, queue: str
) -> None:
    # The same workload, quota and watch, minus the label: the peak reaches parallelism, so the
    # measurement above can see more than the quota, and the quota is what held it at 4.
    w = Workloads(api, namespace)
    body = workload("free", {"range": {"end": 10}}, templates=cpu_template(2500), parallelism=10)
    with JobPeaks(api, namespace) as peaks:
        w.create(body)
        w.wait_phase("free", "Succeeded", TIMEOUT)
    assert peaks.peak_running == 10
    assert not kueue_workloads(api, namespace), "Kueue left an unlabelled Job alone"


@pytest.fixture
def workload_priority_class(api: client.ApiClient) -> Iterator[str]:
    """A Kueue WorkloadPriorityClass (queue order only; the pods get no priority from it)."""
    co = client.CustomObjectsApi(api)
    name = f"apwa-it-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "/".join(KUEUE), "kind": "WorkloadPriorityClass", "metadata": {"name": name}, "value": 77}
    co.create_cluster_custom_object(*KUEUE, "workloadpriorityclasses", body)
    try:
        yield name
    finally:
        co.delete_cluster_custom_object(*KUEUE, "workloadpriorityclasses", name)


def test_suspend_and_resume_go_through_kueue(
    api: client.ApiClient, namespace: str, queue: str, workload_priority_class: str
) -> None:
    w = Workloads(api, namespace)
    co = client.CustomObjectsApi(api)
    n = 10
    body = workload("hold", {"range": {"end": n}}, templates=cpu_template(4000), parallelism=6)
    labels = {"kueue.x-k8s.io/priority-class": workload_priority_class}
    with JobPeaks(api, namespace) as peaks:
        w.create(queued(body, **labels))
        wait_for(
            lambda: peaks.peak_running == QUOTA_CPUS, TIMEOUT, f"{QUOTA_CPUS} Jobs admitted ({w.describe('hold')})"
        )
        # The workload's label reached every Job, and Kueue took its WorkloadPriorityClass.
        wls = kueue_workloads(api, namespace)
        assert {(wl["spec"]["priorityClassRef"]["kind"], wl["spec"]["priority"]) for wl in wls} == {
            ("WorkloadPriorityClass", 77)
        }
        w.patch("hold", {"suspend": True})
        w.wait_phase("hold", "Suspended")

        def all_held() -> bool:
            unfinished = [j for j in w.jobs("hold") if not _finished(j)]
            annotations = [(j.metadata.annotations or {}).get("apwa.dev/held") for j in unfinished]
            return bool(unfinished) and all(j.spec.suspend for j in unfinished) and set(annotations) == {"true"}

        wait_for(all_held, TIMEOUT, "every unfinished Job suspended and marked held")
        # Kueue itself let go: the Workloads are inactive and the ClusterQueue admits nothing.
        wait_for(
            lambda: not any(wl["spec"].get("active", True) for wl in _unfinished_wls(api, namespace)),
            60,
            "every unfinished Kueue Workload deactivated",
        )
        cq = wait_for(
            lambda: (
                (s := co.get_cluster_custom_object(*KUEUE, "clusterqueues", queue).get("status", {}))
                and s.get("admittedWorkloads", 0) == 0
                and s
            ),
            60,
            "the ClusterQueue to release the quota",
        )
        assert cq.get("pendingWorkloads", 0) == 0  # inactive Workloads are not queued either
        assert not [j.metadata.name for j in w.jobs("hold") if not _finished(j) and not j.spec.suspend]
        w.patch("hold", {"suspend": False})
        done = w.wait_phase("hold", "Succeeded", TIMEOUT)
    assert done["status"]["counts"]["succeeded"] == n
    assert peaks.peak_running <= QUOTA_CPUS, f"{peaks.peak_running} subtask Jobs ran at once on {QUOTA_CPUS} CPUs"
    assert not [j.metadata.name for j in w.jobs("hold") if (j.metadata.annotations or {}).get("apwa.dev/held")]


def _finished(job: client.V1Job) -> bool:
    return any(c.status == "True" and c.type in ("Complete", "Failed") for c in job.status.conditions or [])


def _unfinished_wls(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    def finished(wl: dict[str, Any]) -> bool:
        return any(
            c["type"] == "Finished" and c["status"] == "True" for c in wl.get("status", {}).get("conditions") or []
        )

    return [wl for wl in kueue_workloads(api, namespace) if not finished(wl)]


def test_the_docs_manifests_are_accepted_by_kueue_and_the_crd(kueue: None, namespace: str) -> None:
    # docs/kueue.md's objects, into this test's namespace, through the API server with Kueue's
    # validating and defaulting webhooks (a dry run: nothing is stored).
    docs = (REPO / "docs" / "kueue.md").read_text()
    blocks = re.findall(r"(?ms)^```yaml\n(.*?)^```", docs)
    assert len(blocks) == 2, "docs/kueue.md: the queue setup and the workload"
    for block in blocks:
        text = block.replace("namespace: team-a", f"namespace: {namespace}")
        out = subprocess.run(
            ["kubectl", "apply", "--dry-run=server", "-o", "name", "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, f"docs/kueue.md manifest refused: {out.stderr}"
    assert "kueue.x-k8s.io/queue-name: team-a" in blocks[1]
