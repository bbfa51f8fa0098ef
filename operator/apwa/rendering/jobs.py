"""Render a subtask's Job (and the reduce Job) from its template, with isolation enforced."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from apwa import API_VERSION, KIND
from apwa.api.models import (
    ENV_AGENT,
    ENV_AGENT_API_KEY,
    ENV_AGENT_REDUCE,
    AgentSpec,
    Isolation,
    JobTemplate,
    ParallelWorkloadSpec,
    StoreSpec,
)
from apwa.api.vocabulary import Role
from apwa.planning.base import Subtask
from apwa.rendering.failure_policy import pod_failure_policy
from apwa.rendering.names import attempt_suffix, child_name, job_name, label_value
from apwa.rendering.placeholders import PlaceholderError, substitute
from apwa.results.keys import OUTCOME_CHUNK, location_env, workload_root
from apwa.results.protocol import message_budget

LABEL_WORKLOAD = "apwa.dev/workload"
LABEL_UID = "apwa.dev/workload-uid"
LABEL_INDEX = "apwa.dev/index"
LABEL_ROLE = "apwa.dev/role"
# The retry a subtask's (or the reduce's) Job and pods belong to: 0 for the first run. Absent on
# children made before retries existed, which read as 0.
LABEL_ATTEMPT = "apwa.dev/attempt"
ANNOTATION_TEMPLATE = "apwa.dev/template"
# On a Job that spec.suspend suspended (or whose Kueue Workload it deactivated): only Jobs marked so
# are resumed, so a Job suspended by anything else (Kueue waiting for quota) is never unsuspended.
ANNOTATION_HELD = "apwa.dev/held"
# Kueue's LocalQueue label (docs/kueue.md): on the workload, it passes to every child like any other
# label; a Job carrying it is Kueue's to start (created suspended, unsuspended once admitted).
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
MANAGED_BY = {"app.kubernetes.io/managed-by": "apwa"}
# The container's termination message is the result channel; the worker writes here.
RESULT_PATH = "/dev/termination-log"
RESULTS_MOUNT = "/apwa/results"
# With a store: the main containers write large results here; the store sidecar uploads them.
OUTPUT_VOLUME, OUTPUT_MOUNT = "apwa-output", "/apwa/output"
OUTPUT_PATH = f"{OUTPUT_MOUNT}/result"
INPUT_VOLUME, INPUT_MOUNT = "apwa-input", "/apwa/input"
STORE_SIDECAR = "apwa-store"
STORE_FETCH = "apwa-fetch"
# The image of the store sidecar when the operator names none (offline rendering): any image
# with the apwa package (the worker and the operator images both have `apwa-store`).
DEFAULT_SIDECAR_IMAGE = "apwa-operator"
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
    # Not the workload's, but where its children are rendered: the operator's store sidecar image.
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE

    def store_root(self, spec: ParallelWorkloadSpec) -> str:
        assert spec.store is not None
        return workload_root(spec.store.s3.prefix, self.namespace or "local", self.name, self.uid or "offline")


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


def render_job(
    owner: Owner, spec: ParallelWorkloadSpec, subtask: Subtask, count: int, attempt: int = 0
) -> dict[str, Any]:
    template = spec.templates[subtask.template]
    item_json = json.dumps(subtask.item, separators=(",", ":"), sort_keys=True)
    env = {
        "APWA_WORKLOAD": owner.name,
        "APWA_INDEX": str(subtask.index),
        "APWA_COUNT": str(count),
        "APWA_ITEM": item_json,
    }
    context = {"index": subtask.index, "count": count, "workload": owner.name, "item": subtask.item}
    labels = {LABEL_INDEX: str(subtask.index), LABEL_ROLE: Role.SUBTASK.value, LABEL_ATTEMPT: str(attempt)}
    if attempt:
        env["APWA_ATTEMPT"] = str(attempt)  # a worker with side effects outside may want to know
    if spec.store is not None:
        env["APWA_OUTPUT_PATH"] = OUTPUT_PATH
    if spec.agent is not None:
        env[ENV_AGENT] = json.dumps(spec.agent.dump(), separators=(",", ":"), sort_keys=True)
    job = _job(
        owner,
        spec,
        subtask.template,
        template,
        name=job_name(owner.name, subtask.index, attempt),
        labels=labels,
        env=env,
        context=context,
    )
    if spec.decomposition.objects is not None:
        _fetch_inputs(job["spec"]["template"]["spec"], owner, spec, item_json)
    if spec.agent is not None:
        _agent_key(job["spec"]["template"]["spec"], spec.agent)
    return job


def _agent_key(pod: dict[str, Any], agent: AgentSpec) -> None:
    """The API key, for the main container only (the one that runs the agent): by reference to the
    Secret, so its value is in no object APWA writes."""
    ref = agent.api_key_secret_ref
    if ref is None:
        return
    main = pod["containers"][0]
    main["env"] = [e for e in main.get("env") or [] if e.get("name") != ENV_AGENT_API_KEY] + [
        {"name": ENV_AGENT_API_KEY, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    ]


def render_reduce_job(
    owner: Owner,
    spec: ParallelWorkloadSpec,
    results_config_map: str,
    results_key: str,
    total: int = 0,
    attempt: int = 0,
) -> dict[str, Any]:
    """The reduce Job: the results ConfigMap is mounted read-only at RESULTS_MOUNT; with a store,
    an init container streams the results out of it into a file instead."""
    assert spec.results and spec.results.reduce
    name = spec.results.reduce.template
    env = {"APWA_WORKLOAD": owner.name, "APWA_RESULTS_PATH": f"{RESULTS_MOUNT}/{results_key}"}
    if spec.store is not None:
        env["APWA_OUTPUT_PATH"] = OUTPUT_PATH
    agent = spec.results.reduce.agent
    if agent is not None:
        assert spec.agent is not None, "validated: an LLM reduce needs spec.agent"
        env[ENV_AGENT] = json.dumps(spec.agent.dump(), separators=(",", ":"), sort_keys=True)
        env[ENV_AGENT_REDUCE] = json.dumps(agent.dump(), separators=(",", ":"), sort_keys=True)
    context = {"workload": owner.name}
    job = _job(
        owner,
        spec,
        name,
        spec.templates[name],
        name=child_name(owner.name, attempt_suffix(Role.REDUCE.value, attempt)),
        labels={LABEL_ROLE: Role.REDUCE.value, LABEL_ATTEMPT: str(attempt)},
        env=env,
        context=context,
    )
    pod = job["spec"]["template"]["spec"]
    if agent is not None:
        _agent_key(pod, spec.agent)
    if spec.store is not None:
        _fetch_results(pod, owner, spec.store, owner.store_root(spec), total)
        return job
    pod.setdefault("volumes", []).append({"name": "apwa-results", "configMap": {"name": results_config_map}})
    for c in pod["containers"]:
        c.setdefault("volumeMounts", []).append({"name": "apwa-results", "mountPath": RESULTS_MOUNT, "readOnly": True})
    return job


def _fetch_results(pod: dict[str, Any], owner: Owner, store: StoreSpec, root: str, total: int) -> None:
    """The reduce reads its input from a file an init container streams out of the store, so it
    never needs the store's credentials and the input is not capped by a ConfigMap's 1 MiB."""
    path = f"{INPUT_MOUNT}/results.jsonl"
    chunks = str((total + OUTCOME_CHUNK - 1) // OUTCOME_CHUNK)
    own = {**_store_env(store, root), "APWA_OUTCOME_CHUNKS": chunks}
    shared = {"APWA_RESULTS_PATH": path, "APWA_COUNT": str(total)}
    _add_fetch(pod, owner, store, "fetch-results", own, shared)


def _fetch_inputs(pod: dict[str, Any], owner: Owner, spec: ParallelWorkloadSpec, item_json: str) -> None:
    """decomposition.objects: an init container downloads the item's objects into a volume that the
    main containers read at INPUT_MOUNT (named by their keys minus the prefix), so they never need
    the store's credentials (docs/inputs.md)."""
    assert spec.store is not None and spec.decomposition.objects is not None
    shared = {"APWA_INPUT_DIR": INPUT_MOUNT, "APWA_INPUT_PREFIX": spec.decomposition.objects.prefix}
    own = {**_store_env(spec.store, owner.store_root(spec)), "APWA_ITEM": item_json}
    _add_fetch(pod, owner, spec.store, "fetch-inputs", own, shared)


def _add_fetch(
    pod: dict[str, Any], owner: Owner, store: StoreSpec, command: str, own: dict[str, str], shared: dict[str, str]
) -> None:
    """An `apwa-store <command>` init container filling INPUT_VOLUME, which the main containers
    mount read-only. `shared` is set for both (replacing the user's values of those names: the
    files are where the fetch put them); `own` (the store settings) only for the fetch."""
    fetch = {
        "name": STORE_FETCH,
        "image": owner.sidecar_image,
        "command": ["apwa-store", command],
        "env": [{"name": k, "value": v} for k, v in {**own, **shared}.items()] + _credentials(store),
        "volumeMounts": [{"name": INPUT_VOLUME, "mountPath": INPUT_MOUNT}],
        "securityContext": {**_RESTRICTED_CONTAINER, "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod["initContainers"] = [fetch, *(pod.get("initContainers") or [])]
    pod.setdefault("volumes", []).append({"name": INPUT_VOLUME, "emptyDir": {}})
    for c in pod["containers"]:
        c.setdefault("volumeMounts", []).append({"name": INPUT_VOLUME, "mountPath": INPUT_MOUNT, "readOnly": True})
        c["env"] = [e for e in c.get("env") or [] if e.get("name") not in shared] + [
            {"name": k, "value": v} for k, v in shared.items()
        ]
    _recount_message_budget(pod)


def _recount_message_budget(pod: dict[str, Any]) -> None:
    """One more container shares the pod's 12 KiB of termination messages: tell the others."""
    limit = str(message_budget(pod))
    for c in pod["containers"] + pod["initContainers"]:
        for e in c.get("env") or []:
            if e.get("name") == "APWA_RESULT_LIMIT":
                e["value"] = limit


def _store_env(store: StoreSpec, root: str) -> dict[str, str]:
    s3 = store.s3
    return {**location_env(s3.bucket, s3.region, s3.endpoint, s3.path_style), "APWA_STORE_ROOT": root}


def _credentials(store: StoreSpec) -> list[dict[str, Any]]:
    """The store's credentials, by reference to the Secret: never in the spec, never in a Job body."""
    refs = [("AWS_ACCESS_KEY_ID", "accessKeyId", False), ("AWS_SECRET_ACCESS_KEY", "secretAccessKey", False)]
    refs.append(("AWS_SESSION_TOKEN", "sessionToken", True))
    return [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": store.s3.credentials_secret, "key": key, "optional": optional}},
        }
        for name, key, optional in refs
    ]


def _add_store_sidecar(pod: dict[str, Any], owner: Owner, store: StoreSpec, root: str, index: int | None) -> None:
    """The store sidecar (a native sidecar: restartPolicy Always in initContainers) and the output
    volume it shares with the main containers. The kubelet stops it after the main containers have
    exited; it then uploads what they left and reports it in its own termination message."""
    env = {
        **_store_env(store, root),
        "APWA_OUTPUT_PATH": OUTPUT_PATH,
        "APWA_UPLOAD_TIMEOUT": str(store.upload_timeout_seconds),
    }
    if index is not None:
        env["APWA_INDEX"] = str(index)
    sidecar = {
        "name": STORE_SIDECAR,
        "image": owner.sidecar_image,
        "command": ["apwa-store", "upload"],
        "restartPolicy": "Always",
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [{"name": "APWA_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
        + _credentials(store),
        "volumeMounts": [{"name": OUTPUT_VOLUME, "mountPath": OUTPUT_MOUNT, "readOnly": True}],
        "securityContext": {**_RESTRICTED_CONTAINER, "readOnlyRootFilesystem": True},
        "terminationMessagePath": RESULT_PATH,
        "terminationMessagePolicy": "File",
    }
    for i, c in enumerate(pod.get("initContainers") or []):
        if c.get("name") in (STORE_SIDECAR, STORE_FETCH):
            raise RenderError(f"spec.initContainers[{i}].name", f"{c['name']} is reserved by apwa; rename it")
    for i, v in enumerate(pod.get("volumes") or []):
        if v.get("name") in (OUTPUT_VOLUME, INPUT_VOLUME):
            raise RenderError(f"spec.volumes[{i}].name", f"{v['name']} is reserved by apwa; rename it")
    pod["initContainers"] = [*(pod.get("initContainers") or []), sidecar]
    pod.setdefault("volumes", []).append({"name": OUTPUT_VOLUME, "emptyDir": {}})
    for c in pod["containers"]:
        c.setdefault("volumeMounts", []).append({"name": OUTPUT_VOLUME, "mountPath": OUTPUT_MOUNT})
    grace = store.upload_timeout_seconds + 5
    pod["terminationGracePeriodSeconds"] = max(int(pod.get("terminationGracePeriodSeconds") or 30), grace)


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
    if spec.store is not None:
        index = int(labels[LABEL_INDEX]) if LABEL_INDEX in labels else None
        _add_store_sidecar(pod_spec, owner, spec.store, owner.store_root(spec), index)

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

    meta = metadata(owner, name, labels)
    pod_labels = {**(pod_meta.get("labels") or {}), **meta["labels"]}
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
    if LABEL_KUEUE_QUEUE in meta["labels"]:
        # Kueue's webhook would suspend it anyway; created suspended, no pod can start before
        # admission even if that webhook is down (Kueue then finds it suspended and admits it).
        job_spec["suspend"] = True
    # A worker that marks its failure final (apwa.worker.fail(..., final=True)) exits with
    # FINAL_EXIT_CODE: the Job fails at once instead of spending its backoffLimit on a hopeless retry
    # (unless the template's own podFailurePolicy decides that exit code).
    main = pod_spec["containers"][0].get("name", "")
    try:
        job_spec["podFailurePolicy"] = pod_failure_policy(template, main)
    except ValueError as e:
        raise RenderError(f"spec.templates.{template_name}.podFailurePolicy", str(e)) from None
    # No ttlSecondsAfterFinished here on purpose: the operator sets the template's TTL only after
    # it has stored the subtask's outcome, so a TTL can never delete an unrecorded result.
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
