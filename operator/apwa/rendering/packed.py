"""Packed execution: a chunk of subtasks as one Indexed Job (spec.execution.mode Packed).

Each subtask still gets its own pod (the Job's completion index k runs subtask `indices[k]`), its
own retries (backoffLimitPerIndex), its own result and exit code (its pod's termination
message), and the same isolation: the pod template is the per-subtask one, rendered once. What a
pod can't get from a shared template, its item and index, it reads from the chunk's plan: a
ConfigMap of JSON lines mounted read-only at PLAN_MOUNT, line k for completion index k
(`apwa.worker.item()` does it). The Job and its pods carry the chunk's subtask indices
(ANNOTATION_INDICES) so the operator maps every pod and every completed or failed index back to
its subtask without reading the plan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from apwa.api.models import ParallelWorkloadSpec
from apwa.api.vocabulary import Role
from apwa.planning.base import Subtask
from apwa.rendering.jobs import (
    ANNOTATION_TEMPLATE,
    LABEL_ATTEMPT,
    LABEL_ROLE,
    Owner,
    RenderError,
    _job,
    metadata,
)
from apwa.rendering.names import attempt_suffix, child_name
from apwa.rendering.placeholders import WHY_MISSING

# On a chunk Job and its pods: the subtask indices of its completion indexes, as ranges ("0-499").
ANNOTATION_INDICES = "apwa.dev/indices"
# On a chunk Job and its pods: the chunk's first subtask index (a label, for selecting a chunk).
LABEL_CHUNK = "apwa.dev/chunk"
# Set by the Job controller on every pod of an Indexed Job.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
PLAN_VOLUME, PLAN_MOUNT, PLAN_KEY = "apwa-plan", "/apwa/plan", "plan.jsonl"
PLAN_PATH = f"{PLAN_MOUNT}/{PLAN_KEY}"
# A ConfigMap holds 1 MiB; a chunk whose plan would not fit is split (controller side).
MAX_PLAN_BYTES = 900 * 1024
_WHY = (
    "spec.execution.mode is Packed: the pods of a chunk share one template, so each reads its item "
    f"and index from {PLAN_PATH} (apwa.worker.item() and apwa.worker.index() do)"
)


def format_indices(indices: Sequence[int]) -> str:
    """Ascending or not, as Kubernetes writes completedIndexes: "0-3,7,9-10" (order kept)."""
    parts: list[str] = []
    start = prev = None
    for i in indices:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


@lru_cache(maxsize=4096)
def parse_indices(text: str) -> tuple[int, ...]:
    """The inverse of format_indices (and Kubernetes' completedIndexes / failedIndexes)."""
    out: list[int] = []
    for part in text.split(",") if text else ():
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return tuple(out)


def chunk_name(workload: str, first: int, attempt: int = 0) -> str:
    return child_name(workload, attempt_suffix(f"c{first}", attempt))


def plan_lines(subtasks: Sequence[Subtask]) -> str:
    return "".join(
        json.dumps({"index": s.index, "item": s.item}, separators=(",", ":"), sort_keys=True) + "\n" for s in subtasks
    )


def render_chunk(
    owner: Owner, spec: ParallelWorkloadSpec, subtasks: Sequence[Subtask], count: int, attempt: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chunk's Indexed Job and the ConfigMap of its plan. All subtasks share a template."""
    first = subtasks[0]
    template_name = first.template
    assert all(s.template == template_name for s in subtasks), "a chunk is cut where the template changes"
    template = spec.templates[template_name]
    name = chunk_name(owner.name, first.index, attempt)
    indices = format_indices([s.index for s in subtasks])
    env = {"APWA_WORKLOAD": owner.name, "APWA_COUNT": str(count), "APWA_PLAN_PATH": PLAN_PATH}
    if attempt:
        env["APWA_ATTEMPT"] = str(attempt)
    labels = {LABEL_CHUNK: str(first.index), LABEL_ROLE: Role.SUBTASK.value, LABEL_ATTEMPT: str(attempt)}
    context = {"count": count, "workload": owner.name, WHY_MISSING: _WHY}
    job = _job(owner, spec, template_name, template, name=name, labels=labels, env=env, context=context)
    job["metadata"]["annotations"][ANNOTATION_INDICES] = indices
    # Named for its content too: a chunk cut differently after a restart (a wider window) gets a
    # plan of its own instead of finding a stale one of the same name.
    plan_name = f"{name}-{hashlib.sha256(indices.encode()).hexdigest()[:8]}"
    _pack(job, template_name, len(subtasks), indices, plan_name)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, plan_name, {LABEL_ROLE: Role.PLAN.value, LABEL_CHUNK: str(first.index)}),
        "data": {PLAN_KEY: plan_lines(subtasks)},
    }
    return job, config_map


def _pack(job: dict[str, Any], template_name: str, size: int, indices: str, plan_name: str) -> None:
    """The single-pod Job made Indexed: per-index retries, a per-pod deadline, the plan mounted."""
    js = job["spec"]
    pod = js["template"]["spec"]
    pod_meta = js["template"]["metadata"]
    pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), ANNOTATION_INDICES: indices}
    js.update(completionMode="Indexed", completions=size, parallelism=size)
    js["backoffLimitPerIndex"] = js.pop("backoffLimit")
    # No maxFailedIndexes: the failure policy is the operator's, as in mode Jobs. Every index of a
    # chunk starts at once (parallelism = completions), so there is nothing not yet started to
    # spare; running subtasks finish and count, and no further chunk starts once the budget is spent.
    # A subtask's deadline is its pod's: the Job's would be the whole chunk's.
    deadline = js.pop("activeDeadlineSeconds", None)
    if deadline is not None:
        pod["activeDeadlineSeconds"] = deadline
    # Failing "the Job" means failing this subtask: its index, not the chunk's other subtasks.
    for rule in js["podFailurePolicy"]["rules"]:
        if rule["action"] == "FailJob":
            rule["action"] = "FailIndex"
    for i, v in enumerate(pod.get("volumes") or []):
        if v.get("name") == PLAN_VOLUME:
            where = f"spec.templates.{template_name}.podTemplate.spec.volumes[{i}].name"
            raise RenderError(where, f"{PLAN_VOLUME} is reserved by apwa; rename it")
    pod.setdefault("volumes", []).append({"name": PLAN_VOLUME, "configMap": {"name": plan_name}})
    for kind in ("initContainers", "containers"):
        for c in pod.get(kind) or []:
            if c.get("restartPolicy") == "Always":
                continue  # the store sidecar: it needs no plan
            c.setdefault("volumeMounts", []).append({"name": PLAN_VOLUME, "mountPath": PLAN_MOUNT, "readOnly": True})
    job["metadata"]["annotations"].setdefault(ANNOTATION_TEMPLATE, template_name)
