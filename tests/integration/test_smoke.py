"""Smoke tests of the local control plane: what the operator relies on really works here.

Job pods are finished by kwok Stages (testenv/kwok-stages.yaml) driven by env vars on the pod's
first container: KWOK_OUTCOME, KWOK_EXIT_CODE, KWOK_MESSAGE, KWOK_DELAY_MS.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable

import pytest
from helpers import Cluster, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException

TIMEOUT = 60.0


def job_manifest(
    name: str,
    env: dict[str, str] | None = None,
    completions: int = 1,
    parallelism: int = 1,
    backoff_limit: int = 6,
) -> client.V1Job:
    container = client.V1Container(
        name="main",
        image="registry.invalid/apwa/noop:0",  # never pulled: kwok has no container runtime
        env=[client.V1EnvVar(name=k, value=v) for k, v in (env or {}).items()],
    )
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            completions=completions,
            parallelism=parallelism,
            backoff_limit=backoff_limit,
            template=client.V1PodTemplateSpec(spec=client.V1PodSpec(restart_policy="Never", containers=[container])),
        ),
    )


def job_condition(batch: client.BatchV1Api, namespace: str, name: str, cond_type: str) -> bool:
    job = batch.read_namespaced_job_status(name, namespace)
    return any(c.type == cond_type and c.status == "True" for c in job.status.conditions or [])


def job_pods(core: client.CoreV1Api, namespace: str, job_name: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}").items


def is_not_found(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_job_with_three_completions_completes(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, job_manifest("three", completions=3, parallelism=3))

    wait_for(
        lambda: job_condition(batch, namespace, "three", "Complete"),
        TIMEOUT,
        f"Job {namespace}/three Complete",
    )
    job = batch.read_namespaced_job_status("three", namespace)
    assert job.status.succeeded == 3
    assert not job.status.failed
    pods = job_pods(core, namespace, "three")
    assert len(pods) == 3
    for pod in pods:
        assert pod.status.phase == "Succeeded"
        terminated = pod.status.container_statuses[0].state.terminated
        assert terminated.exit_code == 0
        assert terminated.reason == "Completed"


def test_failing_job_reports_exit_code_and_message(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    env = {"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "3", "KWOK_MESSAGE": "boom"}
    batch.create_namespaced_job(namespace, job_manifest("fails", env=env, backoff_limit=0))

    wait_for(
        lambda: job_condition(batch, namespace, "fails", "Failed"),
        TIMEOUT,
        f"Job {namespace}/fails Failed",
    )
    job = batch.read_namespaced_job_status("fails", namespace)
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert job.status.failed == 1
    assert not job.status.succeeded

    pods = job_pods(core, namespace, "fails")
    assert len(pods) == 1
    pod = pods[0]
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.message == "boom"
    assert terminated.reason == "Error"


def test_pod_succeeds_with_json_termination_message(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    result = {"status": "ok", "tokens": 123, "text": 'quotes " and <tags> & unicode \u00e9'}
    env = {"KWOK_MESSAGE": json.dumps(result), "KWOK_DELAY_MS": "300"}
    batch.create_namespaced_job(namespace, job_manifest("msg", env=env))

    def succeeded_pod() -> client.V1Pod | None:
        pods = job_pods(core, namespace, "msg")
        return pods[0] if pods and pods[0].status.phase == "Succeeded" else None

    pod = wait_for(succeeded_pod, TIMEOUT, f"pod of Job {namespace}/msg Succeeded")
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    assert json.loads(terminated.message) == result


def test_pod_without_job_owner_keeps_running(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="plain"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="registry.invalid/x:0")]),
    )
    core.create_namespaced_pod(namespace, pod)

    def running() -> client.V1Pod | None:
        p = core.read_namespaced_pod_status("plain", namespace)
        return p if p.status.phase == "Running" else None

    p = wait_for(running, TIMEOUT, f"pod {namespace}/plain Running")
    assert p.spec.node_name
    assert p.status.container_statuses[0].state.running is not None


def test_deleting_owner_configmap_garbage_collects_dependent(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"})
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid, block_owner_deletion=True
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="child", owner_references=[ref]), data={}),
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    wait_for(
        lambda: is_not_found(lambda: core.read_namespaced_config_map("child", namespace)),
        TIMEOUT,
        f"ConfigMap {namespace}/child garbage-collected after its owner was deleted",
    )


def test_deleting_job_garbage_collects_its_pods(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    # Pods of a running Job (delay far beyond the test) so they exist when the Job is deleted.
    batch.create_namespaced_job(
        namespace, job_manifest("owner", env={"KWOK_DELAY_MS": "3600000"}, completions=2, parallelism=2)
    )
    wait_for(
        lambda: len(job_pods(core, namespace, "owner")) == 2,
        TIMEOUT,
        f"2 pods of Job {namespace}/owner",
    )

    batch.delete_namespaced_job("owner", namespace, propagation_policy="Background")
    wait_for(
        lambda: not job_pods(core, namespace, "owner"),
        TIMEOUT,
        f"pods of Job {namespace}/owner garbage-collected",
    )


def test_crd_created_served_and_deleted(api: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(api)
    custom = client.CustomObjectsApi(api)
    group = f"it{uuid.uuid4().hex[:8]}.test.apwa.dev"
    plural = "widgets"
    crd_name = f"{plural}.{group}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                },
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    try:

        def established() -> bool:
            got = ext.read_custom_resource_definition(crd_name)
            return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or [])

        wait_for(established, TIMEOUT, f"CRD {crd_name} Established")

        widget = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 2},
        }
        # Discovery of a new CRD can lag "Established" by a moment: retry the first create.
        wait_for(
            lambda: custom.create_namespaced_custom_object(group, "v1", namespace, plural, widget),
            TIMEOUT,
            f"create Widget in {namespace}",
        )
        got = custom.get_namespaced_custom_object(group, "v1", namespace, plural, "w1")
        assert got["spec"] == {"size": 2}

        bad = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 0}}
        with pytest.raises(ApiException) as excinfo:
            custom.create_namespaced_custom_object(group, "v1", namespace, plural, bad)
        assert excinfo.value.status == 422
    finally:
        ext.delete_custom_resource_definition(crd_name)

    wait_for(
        lambda: is_not_found(lambda: ext.read_custom_resource_definition(crd_name)),
        TIMEOUT,
        f"CRD {crd_name} deleted",
    )
    with pytest.raises(ApiException) as excinfo:
        custom.list_namespaced_custom_object(group, "v1", namespace, plural)
    assert excinfo.value.status == 404


VALID_MANIFEST = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: dry
data:
  a: "1"
---
apiVersion: batch/v1
kind: Job
metadata:
  name: dry
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: registry.invalid/x:0
"""

# Jobs only allow restartPolicy Never or OnFailure: rejected by server-side validation only.
INVALID_MANIFEST = VALID_MANIFEST.replace("restartPolicy: Never", "restartPolicy: Always")


def kubectl(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    # kubectl comes from PATH and finds the cluster through KUBECONFIG (both set by the fixture).
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_server_side_dry_run(cluster: Cluster, api: client.ApiClient, namespace: str) -> None:
    ok = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=VALID_MANIFEST)
    assert ok.returncode == 0, ok.stderr
    assert "configmap/dry created (server dry run)" in ok.stdout
    assert "job.batch/dry created (server dry run)" in ok.stdout
    # Nothing was persisted.
    core = client.CoreV1Api(api)
    assert is_not_found(lambda: core.read_namespaced_config_map("dry", namespace))

    bad = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=INVALID_MANIFEST)
    assert bad.returncode != 0
    assert "is invalid" in bad.stderr and "restartPolicy" in bad.stderr, bad.stderr

    # The same through the Python client.
    batch = client.BatchV1Api(api)
    job = job_manifest("dry-py")
    batch.create_namespaced_job(namespace, job, dry_run="All")
    assert is_not_found(lambda: batch.read_namespaced_job("dry-py", namespace))
    job.spec.template.spec.restart_policy = "Always"
    with pytest.raises(ApiException) as excinfo:
        batch.create_namespaced_job(namespace, job, dry_run="All")
    assert excinfo.value.status == 422
