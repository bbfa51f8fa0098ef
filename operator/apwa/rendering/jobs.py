"""Render a subtask's Job (and the reduce Job) from its template, with isolation enforced."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from apwa import API_VERSION, KIND
from apwa.api.models import Isolation, JobTemplate, ParallelWorkloadSpec
from apwa.api.vocabulary import Role
from apwa.planning.base import Subtask
from apwa.rendering.names import child_name, job_name, label_value
from apwa.rendering.placeholders import PlaceholderError, substitute
from apwa.results.protocol import FINAL_EXIT_CODE, message_budget

LABEL_WORKLOAD = "apwa.dev/workload"
LABEL_UID = "apwa.dev/workload-uid"
LABEL_INDEX = "apwa.dev/index"
LABEL_ROLE = "apwa.dev/role"
ANNOTATION_TEMPLATE = "apwa.dev/template"
MANAGED_BY = {"app.kubernetes.io/managed-by": "apwa"}
# The container's termination message is the result channel; the worker writes here.
RESULT_PATH = "/dev/termination-log"
RESULTS_MOUNT = "/apwa/results"
# On every subtask and reduce pod (the Job controller copies template finalizers to its pods):
# the pod, and so its termination message, outlives everything until the operator has stored the
# outcome and removes it (controller/finalizers.py). docs/results.md, "A result is never lost silently".
RESULT_FINALIZER = "apwa.dev/result"


class RenderError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Owner:
    """The workload that owns the children. `uid` is unknown when rendering offline."""

    name: str
    namespace: str | None = None
    uid: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def metadata(owner: Owner, name: str, extra_labels: dict[str, str]) -> dict[str, Any]:
    labels = {
        **{k: v for k, v in owner.labels.items() if not k.startswith("apwa.dev/")},
        **MANAGED_BY,
        LABEL_WORKLOAD: label_value(owner.name),
        **extra_labels,
    }
    if owner.uid:
        labels[LABEL_UID] = owner.uid
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if owner.namespace:
        meta["namespace"] = owner.namespace
    if owner.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def render_job(owner: Owner, spec: ParallelWorkloadSpec, subtask: Subtask, count: int) -> dict[str, Any]:
    template = spec.templates[subtask.template]
    item_json = json.dumps(subtask.item, separators=(",", ":"), sort_keys=True)
    env = {
        "APWA_WORKLOAD": owner.name,
        "APWA_INDEX": str(subtask.index),
        "APWA_COUNT": str(count),
        "APWA_ITEM": item_json,
    }
    context = {"index": subtask.index, "count": count, "workload": owner.name, "item": subtask.item}
    labels = {LABEL_INDEX: str(subtask.index), LABEL_ROLE: Role.SUBTASK.value}
    return _job(
        owner,
        spec,
        subtask.template,
        template,
        name=job_name(owner.name, subtask.index),
        labels=labels,
        env=env,
        context=context,
    )


def render_reduce_job(
    owner: Owner, spec: ParallelWorkloadSpec, results_config_map: str, results_key: str
) -> dict[str, Any]:
    """The reduce Job: the results ConfigMap is mounted read-only at RESULTS_MOUNT."""
    assert spec.results and spec.results.reduce
    name = spec.results.reduce.template
    env = {"APWA_WORKLOAD": owner.name, "APWA_RESULTS_PATH": f"{RESULTS_MOUNT}/{results_key}"}
    context = {"workload": owner.name}
    job = _job(
        owner,
        spec,
        name,
        spec.templates[name],
        name=child_name(owner.name, Role.REDUCE.value),
        labels={LABEL_ROLE: Role.REDUCE.value},
        env=env,
        context=context,
    )
    pod = job["spec"]["template"]["spec"]
    pod.setdefault("volumes", []).append({"name": "apwa-results", "configMap": {"name": results_config_map}})
    for c in pod["containers"]:
        c.setdefault("volumeMounts", []).append({"name": "apwa-results", "mountPath": RESULTS_MOUNT, "readOnly": True})
    return job


def _job(
    owner: Owner,
    spec: ParallelWorkloadSpec,
    template_name: str,
    template: JobTemplate,
    *,
    name: str,
    labels: dict[str, str],
    env: dict[str, str],
    context: dict[str, Any],
) -> dict[str, Any]:
    where = f"spec.templates.{template_name}.podTemplate"
    pod_template = copy.deepcopy(template.pod_template)
    pod_meta = pod_template.get("metadata") or {}
    pod_spec = pod_template["spec"]
    isolation = spec.isolation_or_default
    _enforce_isolation(pod_spec, isolation, where)

    for kind in ("initContainers", "containers"):
        for i, c in enumerate(pod_spec.get(kind) or []):
            cwhere = f"{where}.spec.{kind}[{i}]"
            try:
                for key in ("command", "args"):
                    if key in c:
                        c[key] = [substitute(str(a), context) for a in c[key]]
                for e in c.get("env") or []:
                    if "value" in e:
                        e["value"] = substitute(str(e["value"]), context)
            except PlaceholderError as e:
                raise RenderError(cwhere, str(e)) from None
            ours = [{"name": k, "value": v} for k, v in env.items()]
            path = c.get("terminationMessagePath", RESULT_PATH)
            ours.append({"name": "APWA_RESULT_PATH", "value": path})
            # What survives of one container's message in this pod: the worker refuses more.
            ours.append({"name": "APWA_RESULT_LIMIT", "value": str(message_budget(pod_spec))})
            c["env"] = [e for e in c.get("env") or [] if e.get("name") not in env] + ours
            if kind == "containers":
                # The result travels in the termination message; on a crash the log tail stands in.
                c.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")

    pod_labels = {**(pod_meta.get("labels") or {}), **metadata(owner, name, labels)["labels"]}
    finalizers = [f for f in pod_meta.get("finalizers") or [] if f != RESULT_FINALIZER] + [RESULT_FINALIZER]
    pod_template["metadata"] = {**pod_meta, "labels": pod_labels, "finalizers": finalizers}
    job_spec: dict[str, Any] = {
        "backoffLimit": template.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "template": pod_template,
    }
    if template.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = template.active_deadline_seconds
    # A worker that marks its failure final (apwa.worker.fail(..., final=True)) exits with
    # FINAL_EXIT_CODE: the Job fails at once instead of spending its backoffLimit on a hopeless retry.
    main = pod_spec["containers"][0].get("name", "")
    job_spec["podFailurePolicy"] = {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": main, "operator": "In", "values": [FINAL_EXIT_CODE]},
            }
        ]
    }
    # No ttlSecondsAfterFinished here on purpose: the operator sets the template's TTL only after
    # it has stored the subtask's outcome, so a TTL can never delete an unrecorded result.
    meta = metadata(owner, name, labels)
    meta["annotations"] = {ANNOTATION_TEMPLATE: template_name}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


_RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
_RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
_RELAX = "spec.isolation.podSecurity: Unrestricted"
_RELAX_ROOT_FS = "spec.isolation.readOnlyRootFilesystem: false"
# A read-only root file system still needs somewhere to write scratch files. The result file
# (terminationMessagePath) needs nothing: the kubelet bind-mounts it writable at any path.
TMP_VOLUME = "apwa-tmp"
TMP_MOUNT = "/tmp"


def _enforce_isolation(pod: dict[str, Any], isolation: Isolation, where: str) -> None:
    """Apply the isolation defaults; a template that weakens them without saying so is an error."""
    restart = pod.get("restartPolicy", "Never")
    if restart != "Never":
        raise RenderError(f"{where}.spec.restartPolicy", f"must be Never (got {restart}); retries use backoffLimit")
    pod["restartPolicy"] = "Never"
    if pod.get("automountServiceAccountToken") and not isolation.service_account_token:
        raise RenderError(
            f"{where}.spec.automountServiceAccountToken",
            "a service account token needs spec.isolation.serviceAccountToken: true",
        )
    pod["automountServiceAccountToken"] = isolation.service_account_token
    pod.setdefault("enableServiceLinks", False)
    if isolation.runtime_class_name:
        pod["runtimeClassName"] = isolation.runtime_class_name
    if isolation.pod_security == "Unrestricted":
        return
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            raise RenderError(f"{where}.spec.{key}", f"not allowed under restricted isolation (set {_RELAX})")
    for i, v in enumerate(pod.get("volumes") or []):
        if "hostPath" in v:
            raise RenderError(f"{where}.spec.volumes[{i}]", f"hostPath volumes need {_RELAX}")
    pod["securityContext"] = _merge(pod.get("securityContext") or {}, _RESTRICTED_POD, f"{where}.spec.securityContext")
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(pod.get(kind) or []):
            cwhere = f"{where}.spec.{kind}[{i}].securityContext"
            sc = c.get("securityContext") or {}
            added = set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}
            if added:
                raise RenderError(f"{cwhere}.capabilities.add", f"{sorted(added)} need {_RELAX}")
            c["securityContext"] = _merge(sc, _RESTRICTED_CONTAINER, cwhere)
    if isolation.read_only_root_filesystem:
        _read_only_root(pod, where)


def _read_only_root(pod: dict[str, Any], where: str) -> None:
    """Every container's root file system read-only, with a writable emptyDir at /tmp."""
    volumes = pod.get("volumes") or []
    for i, v in enumerate(volumes):
        if v.get("name") == TMP_VOLUME:
            raise RenderError(f"{where}.spec.volumes[{i}].name", f"{TMP_VOLUME} is reserved by apwa; rename it")
    needs_tmp = False
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(pod.get(kind) or []):
            sc = c["securityContext"]
            if sc.get("readOnlyRootFilesystem", True) is not True:
                raise RenderError(
                    f"{where}.spec.{kind}[{i}].securityContext.readOnlyRootFilesystem",
                    f"a writable root file system needs {_RELAX_ROOT_FS}",
                )
            sc["readOnlyRootFilesystem"] = True
            mounts = c.setdefault("volumeMounts", [])
            if not any(m.get("mountPath", "").rstrip("/") == TMP_MOUNT for m in mounts):
                mounts.append({"name": TMP_VOLUME, "mountPath": TMP_MOUNT})
                needs_tmp = True
    if needs_tmp:
        pod["volumes"] = [*volumes, {"name": TMP_VOLUME, "emptyDir": {}}]


def _merge(user: dict[str, Any], required: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(user)
    if user.get("runAsUser") == 0:
        raise RenderError(f"{where}.runAsUser", f"0 (root) needs {_RELAX}")
    for key, value in required.items():
        if key not in user:
            out[key] = value
        elif key == "capabilities":
            drop = set((user[key] or {}).get("drop") or [])
            out[key] = {**user[key], "drop": sorted(drop | {"ALL"})}
        elif key == "seccompProfile":
            if (user[key] or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                raise RenderError(f"{where}.seccompProfile", f"{user[key]} needs {_RELAX}")
        elif user[key] != value:
            raise RenderError(f"{where}.{key}", f"{user[key]!r} weakens isolation; it needs {_RELAX}")
    return out


def without_result_finalizer(job: dict[str, Any]) -> dict[str, Any]:
    """The Job without RESULT_FINALIZER on its pods (APWA_POD_FINALIZER=0: benchmarks, escape hatch)."""
    meta = job["spec"]["template"]["metadata"]
    meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != RESULT_FINALIZER]
    if not meta["finalizers"]:
        del meta["finalizers"]
    return job
