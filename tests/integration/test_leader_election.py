"""Two operator replicas with leader election on a Lease (apwa/controller/leader.py), on the real
control plane: one acts, the other waits; the leader SIGKILLed mid-run is replaced by the standby,
and a clean stop hands over at once. Asserted: one leader at a time, every subtask's Job created
once, the status' counts never going back, the run completing. Takeover times are printed (the
machine is shared: they are measured, not asserted).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import temporary_namespace, wait_for
from kubernetes import client, watch
from operator_proc import OperatorProcess
from workloads import Workloads, all_succeeded, workload

# Short timings keep the test short; the chart uses client-go's 15 / 10 / 2 s.
TIMINGS = {"APWA_LEASE_DURATION": "6", "APWA_RENEW_DEADLINE": "4", "APWA_RETRY_PERIOD": "1"}
LEASE = "apwa-operator"


@pytest.fixture
def ns(api: client.ApiClient) -> Iterator[str]:
    # Not the session operator's prefix: only the two replicas under test handle this namespace.
    with temporary_namespace(api, f"apwa-ha-{uuid.uuid4().hex[:6]}", {"apwa.dev/test": "ha"}) as name:
        yield name


def replica(tmp: Path, ns: str, name: str) -> OperatorProcess:
    args = ["--namespace", ns, "--leader-election", "--leader-election-namespace", ns]
    op = OperatorProcess(tmp / name, TIMINGS, args)
    op.start()
    return op


def leading(op: OperatorProcess) -> bool:
    if op.proc is None or op.proc.poll() is not None:
        return False
    m = re.search(r"^apwa_leader (\S+)$", op.metrics(), re.M)
    return bool(m and float(m.group(1)) == 1.0)


class Recorder:
    """Every Job event and every status count seen, from watches, while the test runs."""

    def __init__(self, api: client.ApiClient, ns: str) -> None:
        self.api, self.ns = api, ns
        self.jobs: dict[str, set[str]] = defaultdict(set)
        self.succeeded: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._jobs, self._status)]

    def __enter__(self) -> Recorder:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()

    def _jobs(self) -> None:
        batch = client.BatchV1Api(self.api)
        for ev in watch.Watch().stream(batch.list_namespaced_job, self.ns, timeout_seconds=300):
            self.jobs[ev["object"].metadata.name].add(ev["object"].metadata.uid)
            if self.stop.is_set():
                return

    def _status(self) -> None:
        co = client.CustomObjectsApi(self.api)
        stream = watch.Watch().stream(
            co.list_namespaced_custom_object, "apwa.dev", "v1alpha1", self.ns, "parallelworkloads", timeout_seconds=300
        )
        for ev in stream:
            counts = (ev["object"].get("status") or {}).get("counts") or {}
            if "succeeded" in counts:
                self.succeeded.append(counts["succeeded"])
            if self.stop.is_set():
                return


def holder(api: client.ApiClient, ns: str) -> dict[str, Any]:
    lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, ns)
    return {"holder": lease.spec.holder_identity, "transitions": lease.spec.lease_transitions}


def test_a_standby_takes_over_from_a_killed_leader_and_nothing_is_lost(
    api: client.ApiClient, ns: str, tmp_path: Path
) -> None:
    a = replica(tmp_path, ns, "a")
    wait_for(lambda: leading(a), 60, "replica a leads")
    b = replica(tmp_path, ns, "b")
    try:
        w, n = Workloads(api, ns), 150
        with Recorder(api, ns) as seen:
            w.create(
                workload(
                    "ha", {"range": {"end": n}}, {"KWOK_DELAY_MS": "300", "KWOK_MESSAGE": "{{ index }}"}, parallelism=15
                )
            )
            wait_for(lambda: w.get("ha").get("status", {}).get("counts", {}).get("succeeded", 0) >= 30, 180, "30 done")
            assert leading(a) and not leading(b), "one leader at a time"
            killed = time.monotonic()
            a.kill()
            wait_for(lambda: leading(b), 120, "replica b takes over")
            takeover = time.monotonic() - killed
            done = w.wait_condition("ha", "Complete", timeout=300)
        print(f"\ntakeover after SIGKILL of the leader: {takeover:.1f} s (lease 6 s, retry 1 s)")
        assert done["status"]["counts"] == all_succeeded(n)
        assert {i: e["result"] for i, e in w.results("ha").items()} == {i: i for i in range(n)}
        assert len(seen.jobs) == n and all(len(u) == 1 for u in seen.jobs.values()), "a Job created twice"
        assert seen.succeeded == sorted(seen.succeeded), "the status went backwards"
        lease = holder(api, ns)
        assert lease["holder"].startswith("apwa@") and lease["transitions"] >= 1
        # A clean stop (a rolling update) gives the Lease up: the next replica leads at once.
        a.start()
        assert not leading(a)
        stopped = time.monotonic()
        b.stop()
        wait_for(lambda: leading(a), 60, "replica a takes over after b stopped")
        print(f"handover after a clean stop of the leader: {time.monotonic() - stopped:.1f} s")
    finally:
        a.stop()
        b.stop()
