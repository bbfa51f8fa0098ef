"""Kueue's Workloads, the handle spec.suspend has on a Job that Kueue admits (docs/kueue.md).

Kueue unsuspends any admitted Job found suspended, so suspending such a Job directly would be
undone at once; its Workload's `spec.active: false` is what Kueue itself offers to stop one (it
evicts it, suspends the Job and frees its quota), and `true` puts it back in its queue. Kueue
makes one Workload per Job, owned by the Job and labelled with its uid.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from apwa.api.vocabulary import Reason
from apwa.core import Stalled
from apwa.kube.client import ApiError, Kube, ns_path

# v1beta2: the storage version since Kueue v0.15 (v1beta1 is deprecated).
KUEUE_API = "kueue.x-k8s.io/v1beta2"
WORKLOADS = "workloads"
# Kueue labels each Workload with the uid of the Job it stands for.
LABEL_JOB_UID = "kueue.x-k8s.io/job-uid"
# A Job created a moment ago may have no Workload yet: look again this soon.
RETRY_SECONDS = 2.0


async def workloads_of(kube: Kube, namespace: str, job_uids: Collection[str]) -> dict[str, str]:
    """The names of the Kueue Workloads of these Jobs, by Job uid (Jobs without one yet are absent)."""
    path = ns_path(KUEUE_API, namespace, WORKLOADS)
    out: dict[str, str] = {}
    try:
        async for wl in kube.list(path, labelSelector=LABEL_JOB_UID):
            for ref in wl["metadata"].get("ownerReferences") or []:
                if ref.get("controller") and ref.get("uid") in job_uids:
                    out[ref["uid"]] = wl["metadata"]["name"]
    except ApiError as e:
        raise _stall(e, "list") from None
    return out


async def set_active(kube: Kube, namespace: str, names: Collection[str], active: bool) -> None:
    """Set spec.active of these Workloads (idempotent; one gone meanwhile is no error)."""
    path = ns_path(KUEUE_API, namespace, WORKLOADS)
    try:
        await asyncio.gather(*(kube.merge_patch(f"{path}/{n}", {"spec": {"active": active}}) for n in names))
    except ApiError as e:
        raise _stall(e, "patch") from None


def _stall(e: ApiError, verb: str) -> Exception:
    if e.status == 404:
        message = (
            f"the Kueue Workload API ({KUEUE_API}) is not served, but subtask Jobs carry the "
            "kueue.x-k8s.io/queue-name label: install Kueue v0.15 or later, or remove that label from the workload"
        )
        return Stalled(Reason.KUEUE_UNAVAILABLE, message, retry=60)
    if e.status == 403:
        message = (
            f"{verb} on workloads.kueue.x-k8s.io is forbidden ({e.message}); spec.suspend of a Kueue-queued "
            "workload needs it: install the chart with rbac.kueue=true (the default)"
        )
        return Stalled(Reason.FORBIDDEN, message, retry=60)
    return e
