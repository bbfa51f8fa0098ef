"""decomposition.objects against the test environment's S3 server (hack/s3.sh: versitygw) and the
local control plane: a prefix of 100,000 objects is listed once, within seconds, and its plan is
stored in the bucket with a pointer ConfigMap; a small prefix runs end to end on kwok.

The 100,000 objects are uploaded once under BENCH_PREFIX and reused by later runs (the bucket's
data lives in the cluster's state dir). The planning figure is printed (pytest -s), not asserted:

    APWA_CLUSTER_NAME=inputs .venv/bin/pytest tests/integration/test_inputs.py -s -k 100000
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from apwa.api.models import ParallelWorkloadSpec
from apwa.controller.dynamic import PlanContext, plan_config_map_name
from apwa.controller.inputs import object_plan
from apwa.controller.store import read_payload
from apwa.kube.client import Kube
from apwa.rendering import Owner
from apwa.store.s3 import Bucket, Credentials, Location
from helpers import Cluster, temporary_namespace, wait_for
from kubernetes import client
from s3_env import S3Server
from workloads import Workloads, pod_template, workload

BENCH_PREFIX = "apwa-inputs-bench/v2/"
BENCH_OBJECTS = 100_000
UPLOAD_CONCURRENCY = 64


def bucket_of(s3: S3Server) -> Bucket:
    where = Location(s3.bucket, s3.endpoint, s3.region, path_style=True)
    return Bucket(where, Credentials(s3.access_key, s3.secret_key), timeout=60.0)


def store_of(s3: S3Server, secret: str) -> dict[str, Any]:
    """spec.store for the test server, as the operator on this machine reaches it."""
    where = {"bucket": s3.bucket, "endpoint": s3.endpoint, "region": s3.region, "pathStyle": True}
    return {"s3": {**where, "credentialsSecret": secret}}


def bench_key(i: int) -> str:
    """100 "directories" of 1,000 objects. Flat would measure the test server, not APWA: versitygw's
    posix backend reads and sorts a whole directory for every listing page (0.4 s a page for 100,000
    entries on this machine), where it skips the directories before the page's start. A hash in
    every key keeps the plan from compressing into a ConfigMap, as real names would."""
    return f"{BENCH_PREFIX}{i // 1000:03d}/{i:06d}-{hashlib.sha1(str(i).encode()).hexdigest()[:12]}.txt"


async def upload_missing(bucket: Bucket, prefix: str, objects: dict[str, bytes]) -> int:
    """Put the objects that are not there yet, many at a time; returns how many were put."""
    present = {key async for key, _ in bucket.keys(prefix)}
    missing = [key for key in objects if key not in present]
    slots = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def put(key: str) -> None:
        async with slots:
            await bucket.put(key, objects[key])

    await asyncio.gather(*(put(key) for key in missing))
    return len(missing)


def secret(w: Workloads, s3: S3Server, name: str = "s3") -> None:
    data = {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key}
    w.core.create_namespaced_secret(w.ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data))


class CountingLists:
    """Bucket.keys and Bucket.folders, counting the listing requests under one prefix."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
        self.calls = 0
        keys, folders = Bucket.keys, Bucket.folders

        def counted_keys(bucket: Bucket, listed: str, **kw: Any) -> AsyncIterator[tuple[str, int]]:
            self.calls += listed.startswith(prefix)
            return keys(bucket, listed, **kw)

        async def counted_folders(bucket: Bucket, listed: str) -> tuple[list[str], list[tuple[str, int]]]:
            self.calls += listed.startswith(prefix)
            return await folders(bucket, listed)

        monkeypatch.setattr(Bucket, "keys", counted_keys)
        monkeypatch.setattr(Bucket, "folders", counted_folders)


async def plan_as_a_new_operator(owner: Owner, spec: ParallelWorkloadSpec) -> tuple[list[Any], float]:
    """What an operator that starts now gets for the workload's plan, and how long it took."""
    kube = Kube.from_config()

    async def report(what: str) -> None:
        pass

    try:
        started = time.perf_counter()
        items = await object_plan(PlanContext(kube, owner, BENCH_OBJECTS, report), spec, owner.store_root(spec))
        return items, time.perf_counter() - started
    finally:
        await kube.close()


@pytest.fixture
def bench_namespace(api: client.ApiClient, crd: None) -> Iterator[str]:
    # Not a session namespace: no operator of this session plans the workload behind the test's back.
    with temporary_namespace(api, f"inputs-plan-{uuid.uuid4().hex[:6]}", {"apwa.dev/test": "integration"}) as ns:
        yield ns


def test_100000_objects_plan_within_seconds_stored_in_the_bucket_and_never_listed_again(
    api: client.ApiClient, cluster: Cluster, bench_namespace: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kube.from_config() in this process: the kubernetes library read $KUBECONFIG when imported.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", cluster.kubeconfig)
    bucket = bucket_of(s3_server)
    started = time.perf_counter()
    put = asyncio.run(upload_missing(bucket, BENCH_PREFIX, {bench_key(i): b"%d\n" % i for i in range(BENCH_OBJECTS)}))
    print(f"\n[inputs] {put} of {BENCH_OBJECTS} objects uploaded in {time.perf_counter() - started:.1f}s")

    w = Workloads(api, bench_namespace)
    secret(w, s3_server)
    body = w.create(
        workload("bench", {"objects": {"prefix": BENCH_PREFIX}}, store=store_of(s3_server, "s3"), suspend=True)
    )  # the plan ConfigMap's owner: it must exist, or the garbage collector deletes the plan
    spec = ParallelWorkloadSpec.model_validate(body["spec"])
    owner = Owner("bench", bench_namespace, body["metadata"]["uid"])
    started = time.perf_counter()
    asyncio.run(upload_missing(bucket, BENCH_PREFIX, {}))  # one plain paginated listing, for comparison
    print(f"[inputs] one paginated listing of the prefix alone: {time.perf_counter() - started:.2f}s")
    lists = CountingLists(monkeypatch, BENCH_PREFIX)
    items, took = asyncio.run(plan_as_a_new_operator(owner, spec))
    print(f"[inputs] {BENCH_OBJECTS} objects under {BENCH_PREFIX!r} listed, grouped and stored in {took:.2f}s")
    assert len(items) == BENCH_OBJECTS
    assert items[0] == {"keys": [bench_key(0)], "bytes": 2}
    assert items[-1] == {"keys": [bench_key(BENCH_OBJECTS - 1)], "bytes": 6}
    listed = lists.calls
    assert listed == 1 + 100  # the prefix's folders, then each folder

    cm = w.core.read_namespaced_config_map(plan_config_map_name("bench"), bench_namespace)
    pointer = json.loads(read_payload({"data": {"results.json": cm.data["plan.json"]}}))
    stored = pointer["storedAs"]
    assert pointer["subtaskCount"] == BENCH_OBJECTS and "subtasks" not in pointer
    assert pointer["objects"] == {
        "prefix": BENCH_PREFIX,
        "count": BENCH_OBJECTS,
        "bytes": 2 * 10 + 3 * 90 + 4 * 900 + 5 * 9000 + 6 * 90000,
    }
    assert stored["key"].startswith(owner.store_root(spec) + "plan-") and stored["bucket"] == s3_server.bucket
    data = asyncio.run(bucket.get(stored["key"]))
    assert data is not None and hashlib.sha256(data).hexdigest() == stored["sha256"]

    again, took_again = asyncio.run(plan_as_a_new_operator(owner, spec))
    print(f"[inputs] the stored plan read back in {took_again:.2f}s (no listing)")
    assert again == items
    assert lists.calls == listed, "the second planning listed the prefix again"


def test_objects_run_end_to_end_one_subtask_per_group(
    api: client.ApiClient, namespace: str, s3_server: S3Server, operator: Any
) -> None:
    prefix = f"apwa-inputs-e2e/{namespace}/"
    sizes = {f"{prefix}{i:02d}.txt": b"x" * i for i in range(50)}
    asyncio.run(upload_missing(bucket_of(s3_server), prefix, sizes))
    w = Workloads(api, namespace)
    secret(w, s3_server)
    w.create(
        workload(
            "scan",
            {"objects": {"prefix": prefix, "maxObjectsPerSubtask": 10}},
            templates={"default": {"podTemplate": pod_template({"KWOK_MESSAGE": "{{ item.bytes }}"})}},
            store=store_of(s3_server, "s3"),
        )
    )
    done = wait_for(
        lambda: (s := w.get("scan").get("status") or {}).get("phase") in ("Succeeded", "Failed") and s,
        120,
        "workload scan finished",
    )
    assert done["phase"] == "Succeeded", done
    assert done["counts"]["total"] == 5 and done["counts"]["succeeded"] == 5

    jobs = sorted(w.batch.list_namespaced_job(namespace).items, key=lambda j: j.metadata.name)
    fetched = []
    for job in jobs:
        pod = job.spec.template.spec
        fetch = pod.init_containers[0]
        assert fetch.name == "apwa-fetch" and fetch.command == ["apwa-store", "fetch-inputs"]
        env = {e.name: e.value for e in fetch.env}
        fetched.append(json.loads(env["APWA_ITEM"])["keys"])
        main_env = {e.name for e in pod.containers[0].env}
        assert "APWA_INPUT_DIR" in main_env and not any(n.startswith("AWS_") for n in main_env)
    assert fetched == [sorted(sizes)[i : i + 10] for i in range(0, 50, 10)]

    cm = w.core.read_namespaced_config_map(plan_config_map_name("scan"), namespace)
    stored = json.loads(read_payload({"data": {"results.json": cm.data["plan.json"]}}))
    assert len(stored["subtasks"]) == 5  # small: kept in the ConfigMap itself


def fetch_inputs(
    s3: S3Server, prefix: str, keys: list[str], tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run `apwa-store fetch-inputs` as the pod's init container would (the same environment)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APWA_", "AWS_"))},
        **Location(s3.bucket, s3.endpoint, s3.region, path_style=True).env(),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "APWA_ITEM": json.dumps({"keys": keys, "bytes": 0}),
        "APWA_INPUT_PREFIX": prefix,
        "APWA_INPUT_DIR": str(tmp_path / "input"),
        "APWA_RESULT_PATH": str(tmp_path / "message"),
    }
    command = [str(Path(sys.executable).with_name("apwa-store")), "fetch-inputs"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120), env


def test_fetch_inputs_downloads_the_items_objects_where_the_worker_finds_them(
    s3_server: S3Server, tmp_path: Path
) -> None:
    prefix = f"apwa-inputs-fetch/{uuid.uuid4().hex[:8]}/"
    objects = {f"{prefix}a.txt": b"alpha", f"{prefix}deep/er/b.bin": bytes(range(256)) * 4096, f"{prefix}c": b""}
    objects[f"{prefix}not-mine.txt"] = b"another subtask's"
    asyncio.run(upload_missing(bucket_of(s3_server), prefix, objects))
    mine = sorted(k for k in objects if "not-mine" not in k)
    proc, env = fetch_inputs(s3_server, prefix, mine, tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = sorted(str(p.relative_to(tmp_path / "input")) for p in (tmp_path / "input").rglob("*") if p.is_file())
    assert files == ["a.txt", "c", "deep/er/b.bin"]
    for key in mine:
        assert (tmp_path / "input" / key.removeprefix(prefix)).read_bytes() == objects[key]

    # The worker's view of the same directory: its item's files, in key order.
    check = "from apwa import worker; print(*worker.inputs(), sep='\\n')"
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == [str(tmp_path / "input" / k.removeprefix(prefix)) for k in mine]


def test_fetch_inputs_fails_clearly_on_a_missing_object(s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"apwa-inputs-fetch/{uuid.uuid4().hex[:8]}/"
    proc, _ = fetch_inputs(s3_server, prefix, [f"{prefix}gone.txt"], tmp_path)
    assert proc.returncode == 1
    assert f"{prefix}gone.txt" in proc.stderr
    assert "gone.txt" in (tmp_path / "message").read_text()  # the init container's termination message


def test_an_empty_prefix_stalls_until_the_inputs_arrive(
    api: client.ApiClient, namespace: str, s3_server: S3Server, operator: Any
) -> None:
    prefix = f"apwa-inputs-e2e/{namespace}/"
    w = Workloads(api, namespace)
    secret(w, s3_server)
    w.create(workload("early", {"objects": {"prefix": prefix}}, store=store_of(s3_server, "s3")))
    stalled = w.wait_condition("early", "Stalled", timeout=60)
    cond = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
    assert cond["reason"] == "PlanningFailed"
    assert f"no objects under prefix {prefix!r} in bucket {s3_server.bucket!r}" in cond["message"]
    with pytest.raises(client.ApiException):  # nothing is stored from an empty listing
        w.core.read_namespaced_config_map(plan_config_map_name("early"), namespace)

    asyncio.run(upload_missing(bucket_of(s3_server), prefix, {f"{prefix}late.txt": b"here now"}))
    done = w.wait_condition("early", "Complete", timeout=120)  # the operator's retry (with backoff)
    assert done["status"]["counts"] == {**done["status"]["counts"], "total": 1, "succeeded": 1}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param({}, "decomposition.objects needs spec.store", id="no-store"),
        pytest.param({"prefix": "in", "store": True}, "should match '^[^/].*/$'", id="prefix-not-a-folder"),
    ],
)
def test_the_api_server_refuses_what_the_model_refuses(
    api: client.ApiClient, namespace: str, crd: None, s3_server: S3Server, spec: dict[str, Any], message: str
) -> None:
    store = {"store": store_of(s3_server, "s3")} if spec.get("store") else {}
    body = workload("refused", {"objects": {"prefix": spec.get("prefix", "in/")}}, **store)
    with pytest.raises(client.ApiException) as refused:
        Workloads(api, namespace).create(body)
    assert refused.value.status == 422 and message in refused.value.body
