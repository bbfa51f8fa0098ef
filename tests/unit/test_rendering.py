import re

import pytest
from apwa.api.models import ParallelWorkloadSpec
from apwa.planning import plan
from apwa.rendering import (
    Owner,
    RenderError,
    child_name,
    job_name,
    label_value,
    render_job,
    render_network_policy,
    render_reduce_job,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
OWNER = Owner("demo", "ns", "uid-1", {"team": "a", "apwa.dev/workload": "spoof"})


def spec(pod_spec=None, **extra):
    pod_spec = pod_spec or {
        "containers": [{"name": "w", "image": "img", "args": ["{{ item.path }}", "{{index}}/{{ count }}"]}]
    }
    return ParallelWorkloadSpec.model_validate(
        {
            "decomposition": {"items": [{"path": "a.py"}, {"path": "b.py"}]},
            "templates": {
                "default": {
                    "podTemplate": {"spec": pod_spec},
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": 60,
                    "ttlSecondsAfterFinished": 30,
                }
            },
            **extra,
        }
    )


def job_for(s, i=1):
    subs = plan(s)
    return render_job(OWNER, s, subs[i], len(subs))


@pytest.mark.parametrize("name", ["a", "demo", "x" * 63, "y" * 253, "my.workload.v2", "a" * 60 + ".b"])
def test_names_are_valid_labels_and_unique(name):
    names = {job_name(name, i) for i in (0, 7, 99999)} | {child_name(name, "reduce")}
    assert len(names) == 4
    for n in names:
        assert len(n) <= 63 and DNS_LABEL.match(n), n
    assert len(label_value(name)) <= 63


def test_long_names_differ_by_hash():
    a, b = "x" * 100 + "a", "x" * 100 + "b"
    assert job_name(a, 1) != job_name(b, 1)
    assert job_name("a.b", 1) != job_name("a-b", 1)
    assert job_name("demo", 3) == "demo-3"


def test_job_shape():
    job = job_for(spec())
    meta, jspec = job["metadata"], job["spec"]
    assert meta["name"] == "demo-1" and meta["namespace"] == "ns"
    assert meta["labels"]["apwa.dev/workload"] == "demo" and meta["labels"]["apwa.dev/index"] == "1"
    assert meta["labels"]["team"] == "a"
    assert meta["ownerReferences"][0]["uid"] == "uid-1" and meta["ownerReferences"][0]["controller"] is True
    assert jspec["backoffLimit"] == 2 and jspec["activeDeadlineSeconds"] == 60
    assert "ttlSecondsAfterFinished" not in jspec  # set by the operator once the outcome is stored
    pod = jspec["template"]
    assert pod["metadata"]["labels"]["apwa.dev/index"] == "1"
    c = pod["spec"]["containers"][0]
    assert c["args"] == ["b.py", "1/2"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["APWA_INDEX"] == "1" and env["APWA_COUNT"] == "2" and env["APWA_WORKLOAD"] == "demo"
    assert env["APWA_ITEM"] == '{"path":"b.py"}' and env["APWA_RESULT_PATH"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert env["APWA_RESULT_LIMIT"] == "4096"
    # A final failure (exit 86 of the main container) fails the Job at once.
    (rule,) = jspec["podFailurePolicy"]["rules"]
    assert rule == {
        "action": "FailJob",
        "onExitCodes": {"containerName": c["name"], "operator": "In", "values": [86]},
    }


def test_no_owner_reference_offline():
    s = spec()
    job = render_job(Owner("demo"), s, plan(s)[0], 2)
    assert "ownerReferences" not in job["metadata"] and "namespace" not in job["metadata"]


def test_isolation_defaults():
    pod = job_for(spec())["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"]
    assert sc["readOnlyRootFilesystem"] is True
    assert "runtimeClassName" not in pod


INIT = {"name": "init", "image": "i", "command": ["true"]}


@pytest.mark.parametrize(
    "pod_spec",
    [
        {"containers": [{"name": "w", "image": "i"}]},
        {"initContainers": [INIT], "containers": [{"name": "w", "image": "i"}, {"name": "x", "image": "i"}]},
        {"volumes": [{"name": "data", "emptyDir": {}}], "containers": [{"name": "w", "image": "i"}]},
    ],
    ids=["one-container", "init-and-two-containers", "user-volume-kept"],
)
def test_read_only_root_with_a_writable_tmp(pod_spec):
    pod = job_for(spec(pod_spec))["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    for c in containers:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "apwa-tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert pod["volumes"][-1] == {"name": "apwa-tmp", "emptyDir": {}}
    assert [v["name"] for v in pod["volumes"][:-1]] == [v["name"] for v in pod_spec.get("volumes", [])]


def test_a_template_tmp_mount_is_kept():
    pod_spec = {
        "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
        "containers": [{"name": "w", "image": "i", "volumeMounts": [{"name": "scratch", "mountPath": "/tmp/"}]}],
    }
    pod = job_for(spec(pod_spec))["spec"]["template"]["spec"]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp/"}]
    assert [v["name"] for v in pod["volumes"]] == ["scratch"]


def test_the_reduce_job_is_read_only_too():
    s = spec(results={"reduce": {}})
    s.templates["default"].pod_template["spec"]["containers"][0]["args"] = ["reduce"]
    pod = render_reduce_job(OWNER, s, "demo-results", "results.json")["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["name"] for v in pod["volumes"]} == {"apwa-tmp", "apwa-results"}


@pytest.mark.parametrize(
    ("isolation", "writable"),
    [
        ({"readOnlyRootFilesystem": False}, True),
        ({"podSecurity": "Unrestricted"}, True),
        ({}, False),
    ],
    ids=["relaxed-by-its-field", "relaxed-by-unrestricted", "not-relaxed"],
)
def test_writable_root_filesystem_needs_a_relaxation(isolation, writable):
    pod_spec = {"containers": [{"name": "w", "image": "i", "securityContext": {"readOnlyRootFilesystem": False}}]}
    if not writable:
        with pytest.raises(RenderError) as e:
            job_for(spec(pod_spec, isolation=isolation))
        assert e.value.field.endswith("containers[0].securityContext.readOnlyRootFilesystem")
        assert "spec.isolation.readOnlyRootFilesystem: false" in e.value.message
        return
    pod = job_for(spec(pod_spec, isolation=isolation))["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]


def test_relaxed_root_filesystem_keeps_the_rest_restricted():
    pod = job_for(spec(isolation={"readOnlyRootFilesystem": False}))["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert "readOnlyRootFilesystem" not in sc and "volumes" not in pod
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]


def test_the_tmp_volume_name_is_reserved():
    pod_spec = {"volumes": [{"name": "apwa-tmp", "emptyDir": {}}], "containers": [{"name": "w", "image": "i"}]}
    with pytest.raises(RenderError) as e:
        job_for(spec(pod_spec))
    assert e.value.field.endswith("spec.volumes[0].name") and "reserved" in e.value.message


@pytest.mark.parametrize("pod_security", ["Restricted", "Unrestricted"])
def test_runtime_class_reaches_the_pod(pod_security):
    s = spec(isolation={"runtimeClassName": "gvisor", "podSecurity": pod_security})
    assert job_for(s)["spec"]["template"]["spec"]["runtimeClassName"] == "gvisor"


def test_compatible_user_settings_are_kept():
    pod_spec = {
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
        "containers": [
            {
                "name": "w",
                "image": "i",
                "securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["NET_RAW"]}},
            }
        ],
    }
    pod = job_for(spec(pod_spec))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL", "NET_RAW"]


@pytest.mark.parametrize(
    ("pod_spec", "field"),
    [
        (
            {"containers": [{"name": "w", "image": "i", "securityContext": {"privileged": True}}]},
            "containers[0].securityContext.privileged",
        ),
        (
            {"containers": [{"name": "w", "image": "i", "securityContext": {"allowPrivilegeEscalation": True}}]},
            "allowPrivilegeEscalation",
        ),
        (
            {"containers": [{"name": "w", "image": "i", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
            "capabilities.add",
        ),
        (
            {"securityContext": {"runAsUser": 0}, "containers": [{"name": "w", "image": "i"}]},
            "securityContext.runAsUser",
        ),
        ({"hostNetwork": True, "containers": [{"name": "w", "image": "i"}]}, "spec.hostNetwork"),
        (
            {"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": [{"name": "w", "image": "i"}]},
            "volumes[0]",
        ),
        (
            {"automountServiceAccountToken": True, "containers": [{"name": "w", "image": "i"}]},
            "automountServiceAccountToken",
        ),
        ({"restartPolicy": "OnFailure", "containers": [{"name": "w", "image": "i"}]}, "restartPolicy"),
        (
            {
                "initContainers": [{**INIT, "securityContext": {"readOnlyRootFilesystem": False}}],
                "containers": [{"name": "w", "image": "i"}],
            },
            "initContainers[0].securityContext.readOnlyRootFilesystem",
        ),
    ],
)
def test_weakening_isolation_by_accident_is_an_error(pod_spec, field):
    with pytest.raises(RenderError) as e:
        job_for(spec(pod_spec))
    assert field in e.value.field
    assert e.value.field.startswith("spec.templates.default.podTemplate.spec")


def test_explicit_relaxation():
    pod_spec = {
        "automountServiceAccountToken": True,
        "containers": [{"name": "w", "image": "i", "securityContext": {"privileged": True}}],
    }
    s = spec(
        pod_spec, isolation={"podSecurity": "Unrestricted", "serviceAccountToken": True, "runtimeClassName": "gvisor"}
    )
    pod = job_for(s)["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"] == {"privileged": True}
    assert pod["automountServiceAccountToken"] is True and pod["runtimeClassName"] == "gvisor"


def test_bad_placeholder_names_the_container():
    pod_spec = {"containers": [{"name": "w", "image": "i", "args": ["{{ item.nope }}"]}]}
    with pytest.raises(RenderError) as e:
        job_for(spec(pod_spec))
    assert e.value.field.endswith("containers[0]") and "no field 'item.nope'" in e.value.message
    with pytest.raises(RenderError, match="unknown placeholder"):
        job_for(spec({"containers": [{"name": "w", "image": "i", "command": ["{{ foo }}"]}]}))


def test_network_policy_modes():
    s = spec()
    np = render_network_policy(OWNER, s.isolation_or_default)
    assert np["spec"]["ingress"] == [] and np["spec"]["egress"] == []
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["podSelector"] == {"matchLabels": {"apwa.dev/workload": "demo"}}
    dns = render_network_policy(OWNER, spec(isolation={"egress": "DNS"}).isolation_or_default)
    assert [p["port"] for p in dns["spec"]["egress"][0]["ports"]] == [53, 53]
    custom = render_network_policy(
        OWNER,
        spec(
            isolation={
                "egress": "Custom",
                "egressRules": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"], "ports": [{"port": 443}]}],
            }
        ).isolation_or_default,
    )
    assert len(custom["spec"]["egress"]) == 2
    assert custom["spec"]["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }


def test_reduce_job_mounts_results():
    s = spec(results={"reduce": {}})
    with pytest.raises(RenderError, match="not available in this Job"):
        render_reduce_job(OWNER, s, "demo-results", "results.json")
    s.templates["default"].pod_template["spec"]["containers"][0]["args"] = ["reduce"]
    job = render_reduce_job(OWNER, s, "demo-results", "results.json")
    assert job["metadata"]["name"] == "demo-reduce" and job["metadata"]["labels"]["apwa.dev/role"] == "reduce"
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][-1]["configMap"]["name"] == "demo-results"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["APWA_RESULTS_PATH"] == "/apwa/results/results.json"


# ---- Kueue: the queue label, suspension at creation, priority (docs/kueue.md) ---------------------
QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY = "kueue.x-k8s.io/priority-class"
QUEUED_OWNER = Owner("demo", "ns", "uid-1", {QUEUE: "team-a", KUEUE_PRIORITY: "batch-low"})
PRIORITY_POD = {"priorityClassName": "batch-high", "containers": [{"name": "w", "image": "img"}]}


@pytest.mark.parametrize(
    ("owner", "suspend"),
    [pytest.param(QUEUED_OWNER, True, id="queued-created-suspended"), pytest.param(OWNER, None, id="not-queued")],
)
@pytest.mark.parametrize("kind", ["subtask", "reduce"])
def test_a_queued_workloads_jobs_are_created_suspended_for_kueue(owner, suspend, kind):
    s = spec(PRIORITY_POD, results={"reduce": {"template": "default"}})
    job = render_job(owner, s, plan(s)[0], 2) if kind == "subtask" else render_reduce_job(owner, s, "cm", "k")
    assert job["spec"].get("suspend") is suspend
    labels = job["metadata"]["labels"]
    assert labels.get(QUEUE) == owner.labels.get(QUEUE)  # Kueue reads the Job's own labels
    assert labels.get(KUEUE_PRIORITY) == owner.labels.get(KUEUE_PRIORITY)  # a WorkloadPriorityClass
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "batch-high"  # Kueue's priority source too


def test_a_queue_label_only_on_the_pod_template_does_not_suspend():
    # Kueue's batch/job integration reads the Job's labels, not its pods': nothing would admit it.
    s = spec({"containers": [{"name": "w", "image": "img"}]})
    s.templates["default"].pod_template["metadata"] = {"labels": {QUEUE: "team-a"}}
    assert "suspend" not in render_job(OWNER, s, plan(s)[0], 2)["spec"]
