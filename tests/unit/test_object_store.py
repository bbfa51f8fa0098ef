"""The object store's pure parts: the spec, rendering (sidecar, fetch container, NetworkPolicy),
the sidecar's message, reading it off a pod, the worker's output file."""

from __future__ import annotations

import json
from typing import Any

import pytest
from apwa import worker
from apwa.api.models import EgressPeer, ParallelWorkloadSpec
from apwa.api.vocabulary import Reason
from apwa.core import ChildIndex, JobState, PodResult
from apwa.core.children import outcome_of
from apwa.core.decide import collect
from apwa.planning import plan
from apwa.rendering import Owner, RenderError, render_job, render_network_policy, render_reduce_job
from apwa.results import Aggregate, StoreFailed, decode_stored, encode_failure, encode_stored
from apwa.results.keys import result_key, workload_root
from pydantic import ValidationError

SECRET = "s3-creds"
OWNER = Owner("w", "ns", "uid-1", sidecar_image="img/apwa:1")
POD = {"spec": {"containers": [{"name": "main", "image": "i", "command": ["true"]}]}}


def store_spec(**store: Any) -> ParallelWorkloadSpec:
    s3 = {"bucket": "results", "prefix": "team/", "endpoint": "http://10.1.2.3:9000", "pathStyle": True}
    s3["credentialsSecret"] = SECRET
    return ParallelWorkloadSpec.model_validate(
        {
            "decomposition": {"range": {"end": 3}},
            "templates": {"default": {"podTemplate": POD}},
            "results": {"reduce": {}},
            "store": {"s3": s3, **store},
        }
    )


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def test_a_subtask_pod_gets_the_store_sidecar_and_the_output_volume() -> None:
    spec = store_spec()
    job = render_job(OWNER, spec, plan(spec)[2], 3)
    pod = job["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["name"] == "apwa-store" and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "img/apwa:1" and sidecar["command"] == ["apwa-store", "upload"]
    env = _env(sidecar)
    assert env["APWA_STORE_ROOT"] == workload_root("team/", "ns", "w", "uid-1") == "team/ns/w-uid-1/"
    assert env["APWA_INDEX"] == "2" and env["APWA_S3_PATH_STYLE"] == "true"
    assert env["APWA_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": SECRET, "key": "accessKeyId", "optional": False}}
    main = pod["containers"][0]
    assert _env(main)["APWA_OUTPUT_PATH"] == "/apwa/output/result"
    # The main container never gets the credentials, not even by reference.
    assert not any(k.startswith("AWS_") for k in _env(main))
    assert {"name": "apwa-output", "mountPath": "/apwa/output"} in main["volumeMounts"]
    assert pod["terminationGracePeriodSeconds"] == 305
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert "AKIA" not in json.dumps(job)


def test_without_a_store_nothing_is_added() -> None:
    spec = ParallelWorkloadSpec.model_validate(
        {"decomposition": {"range": {"end": 1}}, "templates": {"default": {"podTemplate": POD}}}
    )
    pod = render_job(OWNER, spec, plan(spec)[0], 1)["spec"]["template"]["spec"]
    assert "initContainers" not in pod and "APWA_OUTPUT_PATH" not in _env(pod["containers"][0])


def test_reserved_names_are_refused() -> None:
    template = {"spec": {**POD["spec"], "initContainers": [{"name": "apwa-store", "image": "x"}]}}
    spec = store_spec()
    spec.templates["default"].pod_template = template
    with pytest.raises(RenderError, match="apwa-store is reserved"):
        render_job(OWNER, spec, plan(spec)[0], 3)


def test_the_reduce_pod_streams_its_input_from_the_store() -> None:
    spec = store_spec()
    job = render_reduce_job(OWNER, spec, "w-reduce-input", "results.json", total=2500)
    pod = job["spec"]["template"]["spec"]
    fetch, sidecar = pod["initContainers"]
    assert fetch["name"] == "apwa-fetch" and "restartPolicy" not in fetch
    assert _env(fetch)["APWA_OUTCOME_CHUNKS"] == "3"  # 1,000 outcomes per chunk object
    assert sidecar["name"] == "apwa-store" and "APWA_INDEX" not in _env(sidecar)
    main = _env(pod["containers"][0])
    assert main["APWA_RESULTS_PATH"] == "/apwa/input/results.jsonl" and main["APWA_COUNT"] == "2500"
    assert not any("configMap" in v for v in pod["volumes"])


def test_network_policy_opens_the_way_to_the_store_only() -> None:
    by_ip = store_spec(egress=[{"cidr": "10.1.2.3/32", "ports": [{"port": 9000}]}])
    egress = render_network_policy(OWNER, by_ip.isolation_or_default, by_ip.store)["spec"]["egress"]
    assert egress == [{"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"protocol": "TCP", "port": 9000}]}]
    in_cluster = store_spec(
        egress=[{"podSelector": {"matchLabels": {"app": "minio"}}, "namespaceSelector": {"matchLabels": {"n": "s"}}}]
    )
    in_cluster.store.s3.endpoint = "http://minio.storage.svc:9000"  # a name: DNS is needed too
    egress = render_network_policy(OWNER, in_cluster.isolation_or_default, in_cluster.store)["spec"]["egress"]
    assert egress[0]["ports"][0]["port"] == 53
    assert egress[1] == {
        "to": [{"podSelector": {"matchLabels": {"app": "minio"}}, "namespaceSelector": {"matchLabels": {"n": "s"}}}]
    }


def test_an_egress_rule_is_either_an_address_or_selectors() -> None:
    with pytest.raises(ValidationError, match="either cidr or"):
        EgressPeer.model_validate({"cidr": "10.0.0.1/32", "podSelector": {}})
    with pytest.raises(ValidationError, match="either cidr or"):
        EgressPeer.model_validate({})


@pytest.mark.parametrize("bad", ["/abs/", "no-slash"])
def test_prefixes_are_checked(bad: str) -> None:
    with pytest.raises(ValidationError, match="prefix"):
        store_spec().model_validate(
            {**store_spec().dump(), "store": {"s3": {"bucket": "bbb", "prefix": bad, "credentialsSecret": "s"}}}
        )


def test_the_sidecar_message() -> None:
    assert decode_stored(encode_stored(5, "ab").decode()) == {"size": 5, "sha256": "ab"}
    assert decode_stored("") is None
    assert decode_stored('{"apwa":1,"stored":null}') is None
    with pytest.raises(StoreFailed, match="bucket gone"):
        decode_stored(encode_failure("bucket gone", final=False).decode())
    with pytest.raises(StoreFailed, match="not an envelope"):
        decode_stored('{"apwa":1,"stored":{"si')


def _pod(sidecar_state: dict[str, Any] | None, main_message: str = "") -> dict[str, Any]:
    spec = store_spec()
    pod_spec = render_job(OWNER, spec, plan(spec)[1], 3)["spec"]["template"]["spec"]
    statuses = [{"name": "apwa-store", "state": sidecar_state}] if sidecar_state else []
    return {
        "metadata": {"uid": "pod-7", "labels": {"apwa.dev/index": "1", "apwa.dev/role": "subtask"}},
        "spec": pod_spec,
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 0, "message": main_message}}}],
            "initContainerStatuses": statuses,
        },
    }


def test_a_stored_result_is_read_off_the_pod_with_a_key_the_message_cannot_choose() -> None:
    msg = '{"apwa":1,"stored":{"size":9,"sha256":"x","key":"someone/else"}}'
    pod = PodResult.from_body(_pod({"terminated": {"exitCode": 0, "message": msg}}))
    assert pod is not None and not pod.uploading
    key = result_key("team/ns/w-uid-1/", 1, "pod-7")
    assert pod.stored == {"key": key, "size": 9, "sha256": "x"} and key == "team/ns/w-uid-1/results/00000001/pod-7"
    outcome = outcome_of(1, JobState("w-1", finished=True, succeeded=True), pod)
    assert outcome.succeeded and outcome.stored == pod.stored and outcome.result is None


def test_an_inline_result_still_works_with_a_store() -> None:
    pod = PodResult.from_body(_pod({"terminated": {"exitCode": 0}}, '{"apwa":1,"len":1,"value":7}'))
    assert pod is not None and pod.stored is None
    assert outcome_of(1, JobState("w-1", finished=True, succeeded=True), pod).result == 7


def test_a_failed_upload_is_a_failure_not_a_success_without_result() -> None:
    msg = encode_failure("bucket 'results' is unavailable", final=False).decode()
    pod = PodResult.from_body(_pod({"terminated": {"exitCode": 1, "message": msg}}))
    outcome = outcome_of(1, JobState("w-1", finished=True, succeeded=True), pod)
    assert not outcome.succeeded and outcome.reason == Reason.STORE_FAILED
    assert "could not be stored" in outcome.message and "unavailable" in outcome.message


def test_the_operator_waits_for_the_upload_however_long_it_takes() -> None:
    children = ChildIndex()
    children.jobs[1] = JobState("w-1", finished=True, succeeded=True, finished_at=0.0)  # long ago
    uploading = _pod({"running": {}})
    children.pod_event("MODIFIED", uploading, ())
    assert children.pods[1].uploading
    new, _ = collect(children, Aggregate(total=3), now=10_000.0)
    assert new == []
    done = _pod({"terminated": {"exitCode": 0, "message": encode_stored(3, "h").decode()}})
    children.pod_event("MODIFIED", done, ())
    (outcome,) = collect(children, Aggregate(total=3), now=10_000.0)[0]
    assert outcome.stored is not None and outcome.stored["size"] == 3


def test_emit_writes_large_results_to_the_output_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    message, output = tmp_path / "termination-log", tmp_path / "result"
    monkeypatch.setenv("APWA_RESULT_PATH", str(message))
    monkeypatch.setenv("APWA_OUTPUT_PATH", str(output))
    worker.emit({"small": 1})
    assert json.loads(message.read_text())["value"] == {"small": 1} and not output.exists()
    message.unlink()
    big = {"text": "x" * 100_000}
    worker.emit(big)
    assert json.loads(output.read_bytes()) == big and not message.exists()
    assert not (tmp_path / "result.part").exists()


def test_reduce_reads_json_lines_one_at_a_time(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.jsonl"
    rows = [{"index": 0, "ok": True, "result": "a"}, {"index": 1, "ok": False, "reason": "Failed"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("APWA_RESULTS_PATH", str(path))
    monkeypatch.setenv("APWA_COUNT", "2")
    assert list(worker.iter_results()) == [(0, "a")]
    assert worker.results() == {"total": 2, "succeeded": 1, "failed": [1], "results": [{"index": 0, "result": "a"}]}


def test_the_store_example_runs_locally_without_a_store() -> None:
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    example = Path(__file__).resolve().parents[2] / "examples" / "store" / "large-results.yaml"
    apwa = str(Path(sys.executable).parent / "apwa")
    out = subprocess.run([apwa, "run", "--local", "-q", str(example)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["status"]["result"] == {"reports": 8, "findings": 16000}
    assert "spec.store is not used locally" in out.stderr
