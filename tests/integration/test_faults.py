"""The operator under control-plane faults: kube-apiserver and etcd stopped and started mid-run.

Each case runs one workload through a fault and asserts the same end state: every subtask
recorded exactly once (the operator's own counter, not only the stored map), every result
present, no Job created twice for an index (every Job uid ever seen, through a recorder that
re-lists after the outage), the status converged; and that while the fault lasted the operator
said so (/readyz failing and apwa_api_reachable 0), then recovered by itself. The recovery time
(API server ready again -> operator ready; -> first subtask recorded after the outage) is printed.

These tests stop the whole cluster's API server: they use their own operator and a namespace
outside the session's prefix, and run one at a time (the suite is not run in parallel).
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from control_plane import Component, ControlPlane
from helpers import Cluster, temporary_namespace, wait_for
from kubernetes import client, watch
from operator_proc import OperatorProcess
from workloads import Workloads, workload

N = 80
PARALLELISM = 8
DELAY_MS = "1500"  # ~15 s of work: the fault lands mid-run


@dataclass(frozen=True)
class Fault:
    name: str
    apply: Callable[[ControlPlane], None]


def restart(*components: Component, times: int = 1, down_s: float = 0.0) -> Callable[[ControlPlane], None]:
    def apply(cp: ControlPlane) -> None:
        for _ in range(times):
            cp.stop(*components)
            time.sleep(down_s)  # the outage itself, the thing under test (not a synchronisation)
            cp.start(*components)
            cp.revive()
            cp.wait_ready()

    return apply


def etcd_late(down_s: float) -> Callable[[ControlPlane], None]:
    """The API server comes back before etcd: it accepts connections and answers 503 ("the request
    has been made before all known HTTP paths have been installed") until etcd is back."""

    def apply(cp: ControlPlane) -> None:
        cp.stop(*CP)
        cp.start(Component.APISERVER)
        time.sleep(down_s)  # the outage itself, the thing under test
        cp.revive()
        cp.wait_ready()

    return apply


CP = (Component.ETCD, Component.APISERVER)
CI_FAULTS = [
    pytest.param(Fault("apiserver-restart", restart(Component.APISERVER)), id="apiserver-restart"),
    pytest.param(Fault("control-plane-down-2min", restart(*CP, down_s=120)), id="control-plane-down-2min"),
]
SLOW_FAULTS = [
    pytest.param(Fault("apiserver-restart-twice", restart(Component.APISERVER, times=2)), id="apiserver-restart-twice"),
    pytest.param(Fault("etcd-restart", restart(Component.ETCD)), id="etcd-restart"),
    pytest.param(Fault("etcd-back-1min-after-apiserver", etcd_late(60)), id="etcd-back-1min-after-apiserver"),
    pytest.param(Fault("control-plane-down-5min", restart(*CP, down_s=300)), id="control-plane-down-5min"),
]


@dataclass
class JobRecorder:
    """Every Job uid seen per name, through list+watch that re-lists after any error."""

    batch: client.BatchV1Api
    namespace: str
    uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                jobs = self.batch.list_namespaced_job(self.namespace, _request_timeout=5)
                for j in jobs.items:
                    self.uids[j.metadata.name].add(j.metadata.uid)
                w = watch.Watch()
                for ev in w.stream(
                    self.batch.list_namespaced_job,
                    self.namespace,
                    resource_version=jobs.metadata.resource_version,
                    timeout_seconds=30,
                    _request_timeout=60,
                ):
                    job = ev["object"]
                    self.uids[job.metadata.name].add(job.metadata.uid)
                    if self.stop.is_set():
                        return
            except Exception:  # the API server is down: list again once it answers
                self.stop.wait(0.5)


@dataclass
class Sample:
    at: float
    ready: bool | None  # None: the operator did not answer
    reachable: float | None


@dataclass
class Prober:
    """Polls the operator's /readyz and its apwa_api_reachable gauge every 0.2 s."""

    port: int
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.samples.append(Sample(time.monotonic(), self._ready(), self._reachable()))

    def _get(self, path: str) -> tuple[int, str] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=1) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return None

    def _ready(self) -> bool | None:
        got = self._get("/readyz")
        return None if got is None else got[0] == 200

    def _reachable(self) -> float | None:
        got = self._get("/metrics")
        return None if got is None else metric(got[1], "apwa_api_reachable")


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def control_plane(cluster: Cluster) -> Iterator[ControlPlane]:
    cp = ControlPlane(cluster)
    yield cp
    cp.revive()  # whatever a failed test left stopped
    cp.wait_ready()


@pytest.fixture
def fault_ns(api: client.ApiClient) -> Iterator[str]:
    # Outside the session prefix: the session's operator must not act on these workloads too.
    with temporary_namespace(api, f"fault-{uuid.uuid4().hex[:8]}", {"apwa.dev/test": "faults"}) as name:
        yield name


@pytest.fixture
def fault_operator(crd: None, fault_ns: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(tmp_path / "operator", args=["--namespace", fault_ns])
    op.start()
    try:
        yield op
    finally:
        op.stop()


def run_through(fault: Fault, api: client.ApiClient, ns: str, op: OperatorProcess, cp: ControlPlane) -> None:
    w = Workloads(api, ns)
    recorder = JobRecorder(client.BatchV1Api(api), ns)
    prober = Prober(op.port)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (recorder, prober)]
    for t in threads:
        t.start()
    try:
        w.create(
            workload(
                "f",
                {"range": {"end": N}},
                {"KWOK_DELAY_MS": DELAY_MS, "KWOK_MESSAGE": "{{ index }}"},
                parallelism=PARALLELISM,
            )
        )
        wait_for(lambda: succeeded(w) >= 2 * PARALLELISM, 120, "two rounds done before the fault")
        fault_start = time.monotonic()
        fault.apply(cp)
        api_ready = time.monotonic()
        before = succeeded(w)  # progress is measured from what the status said when the API was back
        assert op.proc is not None and op.proc.poll() is None, f"operator exited: {op.log_path.read_text()[-3000:]}"
        op_ready = wait_for(
            lambda: prober.samples and prober.samples[-1].ready and prober.samples[-1].at,
            120,
            "operator ready again after the fault",
        )
        progressed = wait_for(lambda: succeeded(w) > before and time.monotonic(), 180, "progress after the fault")
        done = w.wait_condition("f", "Complete", timeout=300)
    finally:
        recorder.stop.set()
        prober.stop.set()
    print(
        f"\n[{fault.name}] fault {api_ready - fault_start:.1f}s; API ready -> operator ready "
        f"{max(op_ready - api_ready, 0):.1f}s; -> first progress {progressed - api_ready:.1f}s"
    )
    assert done["status"]["counts"] == {"total": N, "pending": 0, "active": 0, "succeeded": N, "failed": 0}
    assert {i: e["result"] for i, e in w.results("f").items()} == {i: i for i in range(N)}
    assert metric(op.metrics(), "apwa_subtasks_succeeded_total") == N, "a subtask was recorded twice"
    assert len(recorder.uids) == N
    duplicated = {name: u for name, u in recorder.uids.items() if len(u) > 1}
    assert not duplicated, f"Jobs created twice: {duplicated}"
    during = [s for s in prober.samples if fault_start + 1 < s.at < api_ready]
    assert any(s.ready is False for s in during), "/readyz never failed while the API server was down"
    assert any(s.reachable == 0 for s in during), "apwa_api_reachable never said 0 while the API server was down"
    assert prober.samples[-1].ready and prober.samples[-1].reachable == 1


def succeeded(w: Workloads) -> int:
    return int((w.get("f").get("status") or {}).get("counts", {}).get("succeeded", 0))


@pytest.mark.parametrize("fault", CI_FAULTS)
def test_operator_waits_out_a_control_plane_fault(
    fault: Fault, api: client.ApiClient, fault_ns: str, fault_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    run_through(fault, api, fault_ns, fault_operator, control_plane)


@pytest.mark.slow
@pytest.mark.parametrize("fault", SLOW_FAULTS)
def test_operator_waits_out_a_longer_control_plane_fault(
    fault: Fault, api: client.ApiClient, fault_ns: str, fault_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    run_through(fault, api, fault_ns, fault_operator, control_plane)
