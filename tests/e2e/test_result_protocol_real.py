"""The result protocol on real containers (docs/results.md): what the kubelet keeps of a
termination message, and that the operator never records a cut message as a success.

One workload, one subtask per case (each item picks a template), run by the in-cluster operator on
the real node. Every outcome is read back with `apwa results`, the CLI users have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_examples import example_namespace, wait_finished
from real_node import RealNode

pytestmark = pytest.mark.e2e

# Python run by each subtask (the worker image has the apwa package; the item says what to do).
WORKER = r"""
import json, os, sys
from apwa import worker
from apwa.results.protocol import encode_result
case = worker.item()["case"]
path = os.environ["APWA_RESULT_PATH"]
def exactly(total):  # a string whose envelope is exactly `total` bytes
    n = total
    while len(encode_result("x" * n, 1 << 20)) > total:
        n -= 1
    return "x" * n
if case == "exact-4096":
    value = exactly(4096)
    assert len(encode_result(value)) == 4096
    worker.emit(value)
elif case == "emit-too-large":
    worker.emit("y" * 5000)
elif case == "bare-5000":
    open(path, "w").write("z" * 5000)
elif case == "four-containers-fit":
    worker.emit(exactly(3072))
elif case == "four-containers-emit-too-large":
    worker.emit("w" * 3500)
elif case == "four-containers-cut":
    open(path, "wb").write(encode_result("v" * 3500, 1 << 20))
elif case == "final-failure":
    worker.fail("row 3 is not a CSV record", final=True)
elif case == "crash":
    print("loading the model", flush=True)
    print("step 2 of 3: parsing the answer", flush=True)
    sys.exit(3)
"""

CASES = [
    "exact-4096",
    "emit-too-large",
    "bare-5000",
    "four-containers-fit",
    "four-containers-emit-too-large",
    "four-containers-cut",
    "crash",
    "final-failure",
]


def _container(name: str, image: str, command: list[str]) -> dict[str, Any]:
    return {"name": name, "image": image, "imagePullPolicy": "Never", "command": command}


def _template(case: str) -> str:
    return "four" if case.startswith("four") else "retrying" if case.startswith("final") else "default"


def _workload(name: str, image: str, place: Any) -> dict[str, Any]:
    main = _container("main", image, ["python3", "-c", WORKER])
    sidecars = [_container(f"side-{i}", image, ["python3", "-c", "pass"]) for i in range(3)]
    templates = {
        "default": {"podTemplate": {"spec": place({"containers": [main]})}},
        # Four containers share the pod's 12 KiB: 3072 bytes each.
        "four": {"podTemplate": {"spec": place({"containers": [main, *sidecars]})}},
        # Retries allowed: a final failure must not use them.
        "retrying": {"backoffLimit": 2, "podTemplate": {"spec": place({"containers": [main]})}},
    }
    items = [{"case": c, "template": _template(c)} for c in CASES]
    return {
        "apiVersion": "apwa.dev/v1alpha1",
        "kind": "ParallelWorkload",
        "metadata": {"name": name},
        "spec": {
            "decomposition": {"items": items},
            "parallelism": len(CASES),
            "failurePolicy": {"maxFailedSubtasks": len(CASES)},
            "templates": templates,
        },
    }


@pytest.fixture(scope="module")
def outcomes(incluster_operator: RealNode) -> Iterator[dict[str, dict[str, Any]]]:
    node = incluster_operator
    with example_namespace(node.kubectl, "protocol-") as ns:
        doc = _workload("protocol", node.images["worker"], node.place)
        node.kubectl("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump(doc))
        status = wait_finished(lambda: node.get("-n", ns, "parallelworkload", "protocol"), f"{ns}/protocol")["status"]
        assert status["counts"]["total"] == len(CASES), status
        apwa = str(Path(sys.executable).parent / "apwa")
        out = subprocess.run(
            [apwa, "results", "protocol", "-n", ns, "-o", "json"], capture_output=True, text=True, check=True
        ).stdout
        rows = {CASES[row["index"]]: row for row in json.loads(out)}
        final_pods = node.get("-n", ns, "pods", "-l", f"apwa.dev/index={CASES.index('final-failure')}")["items"]
        rows["final-failure"]["pods"] = len(final_pods)
        yield rows


def test_a_result_of_exactly_4096_bytes_arrives_whole(outcomes: dict[str, dict[str, Any]]) -> None:
    row = outcomes["exact-4096"]
    assert row["succeeded"], row
    assert isinstance(row["result"], str) and set(row["result"]) == {"x"} and len(row["result"]) > 4000


def test_a_result_that_fits_a_four_container_pod_arrives_whole(outcomes: dict[str, dict[str, Any]]) -> None:
    row = outcomes["four-containers-fit"]
    assert row["succeeded"] and set(row["result"]) == {"x"} and len(row["result"]) > 3000, row


@pytest.mark.parametrize("case", ["emit-too-large", "four-containers-emit-too-large"])
def test_emit_refuses_what_the_kubelet_would_cut(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    row = outcomes[case]
    limit = "3072" if case.startswith("four") else "4096"
    assert not row["succeeded"] and row["exitCode"] == 1, row
    assert "ResultTooLarge" in row["message"] and f"at most {limit}" in row["message"], row


@pytest.mark.parametrize(
    ("case", "cut_by"),
    [("bare-5000", "4096 bytes per container"), ("four-containers-cut", "3072 bytes per container")],
)
def test_a_message_the_kubelet_cut_is_a_failure_not_a_success(
    outcomes: dict[str, dict[str, Any]], case: str, cut_by: str
) -> None:
    row = outcomes[case]
    assert not row["succeeded"], row
    assert row["reason"] == "ResultTruncated" and cut_by in row["message"], row


def test_a_crash_reports_its_exit_code_and_log_tail(outcomes: dict[str, dict[str, Any]]) -> None:
    row = outcomes["crash"]
    assert not row["succeeded"] and row["exitCode"] == 3, row
    assert "step 2 of 3: parsing the answer" in row["message"], row


def test_a_final_failure_is_not_retried(outcomes: dict[str, dict[str, Any]]) -> None:
    row = outcomes["final-failure"]
    assert not row["succeeded"] and row["exitCode"] == 86, row
    assert (row["reason"], row["message"]) == ("Final", "row 3 is not a CSV record"), row
    assert row["pods"] == 1, "backoffLimit 2 allowed two more pods; a final failure takes none"
