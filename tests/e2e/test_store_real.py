"""Large results on real containers: a worker's 5 MiB result goes through its pod's store sidecar
into the test S3 server (through the workload's NetworkPolicy), and the reduce step reads it back.

The control: the same workload without the store's egress rule cannot upload (the NetworkPolicy
blocks the sidecar), and the subtask is reported StoreFailed, never a success without its result.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from e2e_examples import example_namespace, wait_finished
from real_node import STORE_SECRET, RealNode
from s3_env import S3Server

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024

WORKER = r"""
from apwa import worker
size = worker.item()["bytes"]
worker.emit("r" * size if size else {"small": True})
"""

REDUCE = r"""
import hashlib, json
from apwa import worker
sizes, digests = {}, {}
for index, result in worker.iter_results():  # one result in memory at a time
    data = json.dumps(result, separators=(",", ":")).encode()
    sizes[index], digests[index] = len(data), hashlib.sha256(data).hexdigest()
worker.emit({"sizes": sizes, "sha256": digests})
"""


def _workload(name: str, image: str, place: Any, s3: S3Server, *, egress: bool) -> dict[str, Any]:
    url = urlsplit(s3.node_endpoint)
    store: dict[str, Any] = {
        "s3": {
            "bucket": s3.bucket,
            "prefix": "e2e/",
            "endpoint": s3.node_endpoint,
            "region": s3.region,
            "pathStyle": True,
            "credentialsSecret": STORE_SECRET,
        },
        "uploadTimeoutSeconds": 20 if not egress else 120,
    }
    if egress:
        store["egress"] = [{"cidr": f"{url.hostname}/32", "ports": [{"port": url.port}]}]
    container = {"name": "main", "image": image, "imagePullPolicy": "Never"}
    return {
        "apiVersion": "apwa.dev/v1alpha1",
        "kind": "ParallelWorkload",
        "metadata": {"name": name},
        "spec": {
            "decomposition": {"items": [{"bytes": 5 * MIB}, {"bytes": 0}]},
            "parallelism": 2,
            "failurePolicy": {"maxFailedSubtasks": 2},
            "store": store,
            "results": {"reduce": {"template": "reduce"}},
            "templates": {
                "default": {
                    "podTemplate": {
                        "spec": place({"containers": [{**container, "command": ["python3", "-c", WORKER]}]})
                    }
                },
                "reduce": {
                    "podTemplate": {
                        "spec": place({"containers": [{**container, "command": ["python3", "-c", REDUCE]}]})
                    }
                },
            },
        },
    }


@pytest.fixture(scope="module")
def store_ns(incluster_operator: RealNode, s3_server: S3Server) -> Iterator[str]:
    node = incluster_operator
    with example_namespace(node.kubectl, "store-") as ns:
        node.kubectl(
            "-n", ns, "create", "secret", "generic", STORE_SECRET,
            f"--from-literal=accessKeyId={s3_server.access_key}",
            f"--from-literal=secretAccessKey={s3_server.secret_key}",
        )  # fmt: skip
        yield ns


def test_a_5_mib_result_is_uploaded_through_the_network_policy_and_reduced(
    incluster_operator: RealNode, s3_server: S3Server, store_ns: str
) -> None:
    node = incluster_operator
    doc = _workload("big", node.images["worker"], node.place, s3_server, egress=True)
    node.kubectl("-n", store_ns, "apply", "-f", "-", stdin=yaml.safe_dump(doc))
    w = wait_finished(lambda: node.get("-n", store_ns, "parallelworkload", "big"), f"{store_ns}/big")
    status = w["status"]
    assert status["phase"] == "Succeeded", status
    big = json.dumps("r" * 5 * MIB).encode()
    assert status["result"] == {
        "sizes": {"0": len(big), "1": len(b'{"small":true}')},
        "sha256": {"0": hashlib.sha256(big).hexdigest(), "1": hashlib.sha256(b'{"small":true}').hexdigest()},
    }
    assert status["resultsRef"]["objectPrefix"].startswith(f"e2e/{store_ns}/big-")
    cms = node.get("-n", store_ns, "configmaps", "-l", "apwa.dev/role in (results,reduce-input)")["items"]
    assert cms == []
    apwa = str(Path(sys.executable).parent / "apwa")
    out = subprocess.run(
        [apwa, "results", "big", "-n", store_ns, "-o", "jsonl", "--refs"], capture_output=True, text=True, check=True
    ).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["stored"]["size"] == len(big) and rows[0]["stored"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert rows[1] == {"index": 1, "succeeded": True, "result": {"small": True}}  # small results stay inline


def test_control_without_the_egress_rule_the_upload_is_blocked(
    incluster_operator: RealNode, s3_server: S3Server, store_ns: str
) -> None:
    node = incluster_operator
    doc = _workload("blocked", node.images["worker"], node.place, s3_server, egress=False)
    doc["spec"].pop("results")
    node.kubectl("-n", store_ns, "apply", "-f", "-", stdin=yaml.safe_dump(doc))
    w = wait_finished(lambda: node.get("-n", store_ns, "parallelworkload", "blocked"), f"{store_ns}/blocked")
    status = w["status"]
    failed = {f["index"]: f for f in status.get("failedSubtasks") or []}
    # The big result needed the store, and the policy blocked the way: a clear failure.
    assert failed[0]["reason"] == "StoreFailed", status
    assert failed[0]["message"].endswith("is unavailable (HTTP error: error sending request)"), failed[0]
    # The small one never needed the store.
    assert 1 not in failed and status["counts"]["succeeded"] == 1
