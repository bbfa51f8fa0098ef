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
import shlex
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
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
from workloads import Workloads, pod_template, workload

REPO = Path(__file__).resolve().parents[2]
BENCH_PREFIX = "apwa-inputs-bench/v2/"
BENCH_OBJECTS = 100_000
UPLOAD_CONCURRENCY = 64


@dataclass(frozen=True)
class S3:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str

    def client(self) -> Bucket:
        where = Location(self.bucket, self.endpoint, self.region, path_style=True)
        return Bucket(where, Credentials(self.access_key, self.secret_key), timeout=60.0)

    def store(self, secret: str) -> dict[str, Any]:
        s3 = {"bucket": self.bucket, "endpoint": self.endpoint, "region": self.region, "pathStyle": True}
        return {"s3": {**s3, "credentialsSecret": secret}}


@pytest.fixture(scope="session")
def s3() -> S3:
    """The S3 server of this cluster (APWA_CLUSTER_NAME), started when it does not run."""

    def s3_sh(command: str) -> str:
        proc = subprocess.run(
            ["bash", str(REPO / "hack" / "s3.sh"), command], capture_output=True, text=True, timeout=900, cwd=REPO
        )
        if proc.returncode != 0:
            pytest.fail(f"hack/s3.sh {command} failed:\n{proc.stderr[-3000:]}", pytrace=False)
        return proc.stdout

    s3_sh("start")
    words = shlex.split(s3_sh("env").strip().splitlines()[-1])
    values = dict(w.split("=", 1) for w in words[1:])
    return S3(
        values["APWA_S3_ENDPOINT"],
        values["APWA_S3_ACCESS_KEY"],
        values["APWA_S3_SECRET_KEY"],
        values["APWA_S3_BUCKET"],
        values["APWA_S3_REGION"],
    )


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


def secret(w: Workloads, s3: S3, name: str = "s3") -> None:
    data = {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key}
    w.core.create_namespaced_secret(w.ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data))


class CountingLists:
    """Bucket.keys, counting the listings of one prefix (every call lists from the start)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
        self.calls = 0
        original = Bucket.keys

        def keys(bucket: Bucket, listed: str, **kw: Any) -> AsyncIterator[tuple[str, int]]:
            if listed == prefix:
                self.calls += 1
            return original(bucket, listed, **kw)

        monkeypatch.setattr(Bucket, "keys", keys)


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
    api: client.ApiClient, cluster: Cluster, bench_namespace: str, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kube.from_config() in this process: the kubernetes library read $KUBECONFIG when imported.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", cluster.kubeconfig)
    bucket = s3.client()
    started = time.perf_counter()
    put = asyncio.run(upload_missing(bucket, BENCH_PREFIX, {bench_key(i): b"%d\n" % i for i in range(BENCH_OBJECTS)}))
    print(f"\n[inputs] {put} of {BENCH_OBJECTS} objects uploaded in {time.perf_counter() - started:.1f}s")

    w = Workloads(api, bench_namespace)
    secret(w, s3)
    body = w.create(
        workload("bench", {"objects": {"prefix": BENCH_PREFIX}}, store=s3.store("s3"), suspend=True)
    )  # the plan ConfigMap's owner: it must exist, or the garbage collector deletes the plan
    spec = ParallelWorkloadSpec.model_validate(body["spec"])
    owner = Owner("bench", bench_namespace, body["metadata"]["uid"])
    lists = CountingLists(monkeypatch, BENCH_PREFIX)

    items, took = asyncio.run(plan_as_a_new_operator(owner, spec))
    print(f"[inputs] {BENCH_OBJECTS} objects under {BENCH_PREFIX!r} listed, grouped and stored in {took:.2f}s")
    assert len(items) == BENCH_OBJECTS
    assert items[0] == {"keys": [bench_key(0)], "bytes": 2}
    assert items[-1] == {"keys": [bench_key(BENCH_OBJECTS - 1)], "bytes": 6}
    assert lists.calls == 1

    cm = w.core.read_namespaced_config_map(plan_config_map_name("bench"), bench_namespace)
    pointer = json.loads(read_payload({"data": {"results.json": cm.data["plan.json"]}}))
    stored = pointer["storedAs"]
    assert pointer["subtaskCount"] == BENCH_OBJECTS and "subtasks" not in pointer
    assert pointer["objects"] == {
        "prefix": BENCH_PREFIX,
        "count": BENCH_OBJECTS,
        "bytes": 2 * 10 + 3 * 90 + 4 * 900 + 5 * 9000 + 6 * 90000,
    }
    assert stored["key"].startswith(owner.store_root(spec) + "plan-") and stored["bucket"] == s3.bucket
    data = asyncio.run(bucket.get(stored["key"]))
    assert data is not None and hashlib.sha256(data).hexdigest() == stored["sha256"]

    again, took_again = asyncio.run(plan_as_a_new_operator(owner, spec))
    print(f"[inputs] the stored plan read back in {took_again:.2f}s (no listing)")
    assert again == items
    assert lists.calls == 1, "the second planning listed the prefix again"


def test_objects_run_end_to_end_one_subtask_per_group(
    api: client.ApiClient, namespace: str, s3: S3, operator: Any
) -> None:
    prefix = f"apwa-inputs-e2e/{namespace}/"
    sizes = {f"{prefix}{i:02d}.txt": b"x" * i for i in range(50)}
    asyncio.run(upload_missing(s3.client(), prefix, sizes))
    w = Workloads(api, namespace)
    secret(w, s3)
    w.create(
        workload(
            "scan",
            {"objects": {"prefix": prefix, "maxObjectsPerSubtask": 10}},
            templates={"default": {"podTemplate": pod_template({"KWOK_MESSAGE": "{{ item.bytes }}"})}},
            store=s3.store("s3"),
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
