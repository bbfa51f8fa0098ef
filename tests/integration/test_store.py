"""The object store on the real control plane (kwok pods, the test environment's S3 server).

kwok runs no container, so FakeSidecars (store_workers.py) uploads what each pod's store sidecar
would have, under the same key contract, and kwok reports the sidecar's message. Everything the
operator does is real: it reads the Secret, writes outcome chunks to the bucket, and `apwa
results` reads them back. Real uploads by real sidecars are in tests/e2e/test_store_real.py.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from kubernetes import client
from operator_proc import OperatorProcess
from s3_env import S3_SH, S3Server
from store_workers import FakeSidecars, store_message, value_of
from workloads import Workloads, all_succeeded, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")
SECRET = "s3-credentials"
KiB, MiB = 1024, 1024 * 1024
APWA = str(Path(sys.executable).parent / "apwa")


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


@pytest.fixture
def prefix() -> str:
    return f"it-{uuid.uuid4().hex[:8]}/"


def _secret(w: Workloads, access_key: str, secret_key: str, name: str = SECRET) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        string_data={"accessKeyId": access_key, "secretAccessKey": secret_key},
    )
    w.core.create_namespaced_secret(w.ns, body)


def _store(s3: S3Server, prefix: str, bucket: str | None = None, secret: str = SECRET) -> dict[str, Any]:
    return {
        "s3": {
            "bucket": bucket or s3.bucket,
            "prefix": prefix,
            "endpoint": s3.endpoint,
            "region": s3.region,
            "pathStyle": True,
            "credentialsSecret": secret,
        }
    }


def _stored_workload(name: str, n: int, size: int, s3: S3Server, prefix: str, **spec: Any) -> dict[str, Any]:
    env = {"KWOK_DELAY_MS": spec.pop("delay_ms", "50"), "KWOK_STORE_MESSAGE": store_message(size)}
    return workload(name, {"range": {"end": n}}, env, store=_store(s3, prefix), **spec)


def _results(w: Workloads, name: str, *extra: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [APWA, "results", name, "-n", w.ns, "-o", "jsonl", *extra], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def _result_config_maps(w: Workloads) -> list[str]:
    items = w.core.list_namespaced_config_map(w.ns, label_selector="apwa.dev/role in (results,reduce-input)").items
    return [cm.metadata.name for cm in items]


def _rss_mib(op: OperatorProcess) -> float:
    assert op.proc is not None
    for line in Path(f"/proc/{op.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_thousand_outcomes_of_10_kib_live_in_the_store_not_in_etcd(
    w: Workloads, api: client.ApiClient, s3_server: S3Server, prefix: str, operator: OperatorProcess
) -> None:
    n, size = 1000, 10 * KiB
    _secret(w, s3_server.access_key, s3_server.secret_key)
    with FakeSidecars(api, s3_server, w.ns, "big", prefix, lambda _: size) as sidecars:
        started = time.monotonic()
        w.create(_stored_workload("big", n, size, s3_server, prefix, parallelism=200))
        done = w.wait_condition("big", "Complete", timeout=600)
        print(f"\n{n} subtasks with stored results: Complete in {time.monotonic() - started:.1f} s")
        status = done["status"]
        assert status["counts"] == all_succeeded(n)
        root = f"{prefix}{w.ns}/big-{done['metadata']['uid']}/"
        assert status["resultsRef"] == {
            "bucket": s3_server.bucket,
            "objectPrefix": f"{root}outcomes/",
            "chunks": 1,
            "chunkSize": 1000,
        }
        assert _result_config_maps(w) == []  # etcd holds no outcome
        refs = _results(w, "big", "--refs")
        assert [r["index"] for r in refs] == list(range(n))
        assert all(r["succeeded"] and r["stored"]["size"] == size for r in refs)
        assert all(r["stored"]["key"].startswith(f"{root}results/{r['index']:08d}/") for r in refs)
        keys = {r["stored"]["key"] for r in refs}
        wait_for(lambda: keys <= sidecars.uploaded, 120, "every recorded result uploaded")
        assert not sidecars.errors, sidecars.errors
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rows = _results(w, "big")
    assert [r["index"] for r in rows] == list(range(n))
    assert all(json.dumps(r["result"], separators=(",", ":")).encode() == value_of(r["index"], size) for r in rows)
    cli_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        f"apwa results ({n} x {size // KiB} KiB): children's peak RSS {before / 1024:.0f} -> {cli_rss / 1024:.0f} MiB"
    )
    print(f"operator peak RSS {_rss_mib(operator):.0f} MiB")


def test_results_of_1_mib_and_64_mib(w: Workloads, api: client.ApiClient, s3_server: S3Server, prefix: str) -> None:
    sizes = {0: 1 * MiB, 1: 64 * MiB}
    _secret(w, s3_server.access_key, s3_server.secret_key)
    templates = {}
    for i, size in sizes.items():
        env = {"KWOK_DELAY_MS": "2000", "KWOK_STORE_MESSAGE": store_message(size)}
        templates[f"s{i}"] = workload("x", {}, env)["spec"]["templates"]["default"]
    items = [{"template": f"s{i}"} for i in sizes]
    body = workload("large", {"items": items}, templates=templates, store=_store(s3_server, prefix))
    with FakeSidecars(api, s3_server, w.ns, "large", prefix, sizes.__getitem__) as sidecars:
        w.create(body)
        w.wait_condition("large", "Complete", timeout=300)
        wait_for(lambda: len(sidecars.uploaded) == 2, 300, "both results uploaded")
        assert not sidecars.errors, sidecars.errors
    rows = _results(w, "large")
    assert [len(json.dumps(r["result"], separators=(",", ":"))) for r in rows] == [sizes[0], sizes[1]]
    assert _result_config_maps(w) == []


@pytest.mark.parametrize(
    ("case", "reason", "says"),
    [
        ("wrong-keys", "StoreAccessDenied", [SECRET, "refused the credentials"]),
        ("no-secret", "StoreAccessDenied", ["not found", "spec.store.s3.credentialsSecret"]),
        ("no-bucket", "StoreNotFound", ["does not exist", "create the bucket"]),
    ],
)
def test_store_problems_stall_with_a_message_to_act_on(
    w: Workloads, s3_server: S3Server, prefix: str, case: str, reason: str, says: list[str]
) -> None:
    if case == "wrong-keys":
        _secret(w, s3_server.access_key, "not-the-secret-key")
    elif case == "no-bucket":
        _secret(w, s3_server.access_key, s3_server.secret_key)
    body = workload(
        "s", {"range": {"end": 3}}, store=_store(s3_server, prefix, "no-such-bucket" if case == "no-bucket" else None)
    )
    w.create(body)
    stalled = w.wait_condition("s", "Stalled")
    condition = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
    assert condition["reason"] == reason, condition
    for text in says:
        assert text in condition["message"], condition
    assert "not-the-secret-key" not in json.dumps(stalled)
    assert w.jobs("s") == []  # nothing runs before the store is known to work
    if case == "wrong-keys":  # fixing the Secret heals it: no edit of the workload needed
        w.core.delete_namespaced_secret(SECRET, w.ns)
        _secret(w, s3_server.access_key, s3_server.secret_key)
        w.wait_condition("s", "Complete", timeout=180)


def _s3(command: str) -> None:
    subprocess.run(["bash", str(S3_SH), command], check=True, capture_output=True, timeout=120)


def test_a_store_outage_of_a_minute_is_waited_out(
    w: Workloads, api: client.ApiClient, s3_server: S3Server, prefix: str
) -> None:
    n = 300
    _secret(w, s3_server.access_key, s3_server.secret_key)
    body = _stored_workload("outage", n, 64, s3_server, prefix, parallelism=20, delay_ms="200")
    w.create(body)
    wait_for(lambda: (w.get("outage").get("status") or {}).get("counts", {}).get("succeeded", 0) >= 40, 120, "40 done")
    _s3("stop")
    down_at = time.monotonic()
    try:
        stalled = w.wait_condition("outage", "Stalled", timeout=60)
        condition = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
        assert condition["reason"] == "StoreUnavailable", condition
        assert stalled["status"]["phase"] == "Running"
        # The outage lasts a minute: its length is what is tested, not a wait for something.
        time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
        assert (w.get("outage")["status"]["counts"]).get("failed", 0) == 0
    finally:
        _s3("start")
    done = w.wait_condition("outage", "Complete", timeout=300)
    assert done["status"]["counts"] == all_succeeded(n)
    assert not done["status"].get("failedSubtasks")
    refs = _results(w, "outage", "--refs")
    assert [r["index"] for r in refs] == list(range(n)) and all(r["succeeded"] for r in refs)


def test_operator_killed_between_upload_and_record_loses_and_doubles_nothing(
    w: Workloads, api: client.ApiClient, s3_server: S3Server, prefix: str, operator: OperatorProcess
) -> None:
    n = 400
    _secret(w, s3_server.access_key, s3_server.secret_key)
    with FakeSidecars(api, s3_server, w.ns, "kill", prefix, lambda _: 256):
        w.create(_stored_workload("kill", n, 256, s3_server, prefix, parallelism=40, delay_ms="300"))
        wait_for(
            lambda: (w.get("kill").get("status") or {}).get("counts", {}).get("succeeded", 0) >= 60, 120, "60 done"
        )
        operator.kill()  # the active pods finish (and upload) while no operator records them

        def all_active_finished() -> bool:
            phases = [p.status.phase for p in w.core.list_namespaced_pod(w.ns).items]
            return phases.count("Succeeded") >= 80 and not {"Pending", "Running"} & set(phases)

        wait_for(all_active_finished, 120, "the pods active at the kill finished")
        operator.start()
        done = w.wait_condition("kill", "Complete", timeout=300)
    assert done["status"]["counts"] == all_succeeded(n)
    refs = _results(w, "kill", "--refs")
    assert [r["index"] for r in refs] == list(range(n))
    assert len({r["stored"]["key"] for r in refs}) == n
    pods = w.core.list_namespaced_pod(w.ns, label_selector="apwa.dev/workload=kill").items
    by_index = {int(p.metadata.labels["apwa.dev/index"]): p.metadata.uid for p in pods}
    assert all(r["stored"]["key"].endswith("/" + by_index[r["index"]]) for r in refs)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 10,000 Jobs and 1 GB of uploads: far past the default 600 s
def test_ten_thousand_outcomes_of_100_kib(
    w: Workloads, api: client.ApiClient, s3_server: S3Server, prefix: str, operator: OperatorProcess
) -> None:
    """The issue's full size: 10,000 subtasks, 100 KiB results (1 GB in the bucket), nothing in etcd."""
    n, size = 10_000, 100 * KiB
    _secret(w, s3_server.access_key, s3_server.secret_key)
    with FakeSidecars(api, s3_server, w.ns, "huge", prefix, lambda _: size) as sidecars:
        started = time.monotonic()
        w.create(_stored_workload("huge", n, size, s3_server, prefix, parallelism=500))
        done = w.wait_condition("huge", "Complete", timeout=3600)
        elapsed = time.monotonic() - started
        assert done["status"]["counts"]["succeeded"] == n
        assert _result_config_maps(w) == []
        wait_for(lambda: len(sidecars.uploaded) >= n or sidecars.errors, 1200, "every result uploaded")
        assert not sidecars.errors, f"{len(sidecars.uploaded)} uploaded; errors: {sidecars.errors[:3]}"
    started = time.monotonic()
    count = total = 0
    proc = subprocess.Popen([APWA, "results", "huge", "-n", w.ns, "-o", "jsonl"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        row = json.loads(line)
        assert row["index"] == count and row["succeeded"]
        count += 1
        total += len(line)
    assert proc.wait() == 0 and count == n
    read = time.monotonic() - started
    cli_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"\n{n} x {size // KiB} KiB: Complete in {elapsed:.0f} s; operator peak RSS {_rss_mib(operator):.0f} MiB; "
        f"status {len(json.dumps(done['status']))} bytes; apwa results streamed {total / 1e9:.2f} GB in {read:.0f} s, "
        f"peak RSS of the test's children {cli_rss:.0f} MiB"
    )


def test_a_retry_keeps_stored_successes_and_stores_the_retried_result(
    w: Workloads, api: client.ApiClient, s3_server: S3Server, prefix: str
) -> None:
    """Outcomes in the bucket: a retry rewrites the chunk it resets (read back first, since complete
    chunks leave the operator's memory) without touching the successes in it."""
    size = 2 * KiB
    _secret(w, s3_server.access_key, s3_server.secret_key)
    env = {"KWOK_STORE_MESSAGE": store_message(size)}
    flaky = {**env, "KWOK_OUTCOME": "fail", "KWOK_RETRY_OUTCOME": "succeed", "KWOK_MESSAGE": "boom"}
    templates = {"default": {"podTemplate": pod_template(env)}, "flaky": {"podTemplate": pod_template(flaky)}}
    items = [0, {"template": "flaky"}, 2, 3]
    with FakeSidecars(api, s3_server, w.ns, "sr", prefix, lambda _: size):
        w.create(workload("sr", {"items": items}, templates=templates, store=_store(s3_server, prefix)))
        w.wait_condition("sr", "Failed")
        wait_for(lambda: w.get("sr")["status"].get("completionTime"), 60, "sr finished (no Job still running)")
        before = {r["index"]: r for r in _results(w, "sr", "--refs")}
        assert [i for i, r in before.items() if not r["succeeded"]] == [1]
        w.patch("sr", {"retry": {"attempt": 1}})
        done = w.wait_condition("sr", "Complete")["status"]
        assert done["counts"]["succeeded"] == 4
        after = {r["index"]: r for r in _results(w, "sr", "--refs")}
        assert {i: after[i] for i in (0, 2, 3)} == {i: before[i] for i in (0, 2, 3)}  # same objects
        assert after[1]["succeeded"] and after[1]["stored"]["size"] == size
        assert [r["result"] for r in _results(w, "sr")] == [json.loads(value_of(i, size)) for i in range(4)]
