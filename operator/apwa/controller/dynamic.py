"""The operator side of dynamic plans: asked once, stored before the first Job, never recomputed.

The plan lives in ConfigMap `<workload>-plan` (label apwa.dev/role=plan, owned by the workload,
gzip-compressed when large). Every run of the operator reads it first, so a restart anywhere
after the planner answered (even before the first Job) asks nothing again and builds the same
subtasks. Two runs racing to store (an old operator still finishing while a new one starts)
resolve through the API server: creation is atomic, and the loser adopts the winner's plan.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import TYPE_CHECKING, Any

from apwa.api.models import ParallelWorkloadSpec, PlannerSpec
from apwa.controller.store import KEY, config_map_body, read_payload
from apwa.kube.client import ApiError, ns_path
from apwa.planning.base import PlanningError
from apwa.planning.clients import FIELD, display_url
from apwa.planning.dynamic import ask, planner_of
from apwa.rendering import LABEL_ROLE, child_name
from apwa.status import build, now_iso

if TYPE_CHECKING:
    from apwa.controller.workload import WorkloadRunner

log = logging.getLogger("apwa.planner")

PLAN_KEY = "plan.json"
# A ConfigMap holds at most 1 MiB; keep room for metadata. Past this the store would fail on
# every retry, so it is reported as a planning problem instead.
MAX_STORED_BYTES = 1000 * 1024


def plan_config_map_name(workload: str) -> str:
    return child_name(workload, "plan")


async def stored_plan(runner: WorkloadRunner, spec: ParallelWorkloadSpec) -> list[Any]:
    """The workload's plan items: the stored ones, else the planner's answer, stored first."""
    p = planner_of(spec)
    name = plan_config_map_name(runner.name)
    path = ns_path("v1", runner.namespace, "configmaps")
    existing = await runner.kube.get(f"{path}/{name}")
    if existing is not None:
        return _items_of(runner, existing)

    api_key, key_source = await _api_key(runner, p)
    context = await _context(runner, p)
    await _report_planning(runner, p)
    items = await ask(
        spec,
        workload=runner.name,
        namespace=runner.namespace,
        context=context,
        api_key=api_key,
        key_source=key_source,
        max_subtasks=runner.settings.max_subtasks,
    )
    payload = json.dumps(
        {
            "planner": {"type": p.type, "url": display_url(p.url), **({"model": p.model} if p.model else {})},
            "plannedAt": now_iso(),
            "subtasks": items,
        },
        separators=(",", ":"),
    ).encode()
    body = _plan_body(runner, name, payload)
    stored = len(json.dumps(body.get("data") or body.get("binaryData")))
    if stored > MAX_STORED_BYTES:
        raise PlanningError(
            f"{FIELD}.maxSubtasks",
            f"the plan of {len(items)} subtasks takes {stored} bytes even compressed, more than a ConfigMap holds; "
            f"lower {FIELD}.maxSubtasks or have the planner return shorter subtasks",
        )
    try:
        created, _ = await runner.kube.create(path, body)
    except ApiError as e:
        if e.status in (400, 413, 422):
            raise PlanningError(FIELD, f"storing the plan in ConfigMap {name!r} was refused: {e.message}") from None
        raise
    if created:
        log.info("workload %s/%s: stored a plan of %d subtasks in %s", runner.namespace, runner.name, len(items), name)
        return items
    # Another run of the operator stored its plan first: that one is the plan (it may already
    # have Jobs), this answer is dropped.
    existing = await runner.kube.get(f"{path}/{name}")
    if existing is None:
        raise PlanningError(FIELD, f"the stored plan {name!r} disappeared while being read; planning again")
    log.info("workload %s/%s: another run stored the plan first; using it", runner.namespace, runner.name)
    return _items_of(runner, existing)


def _plan_body(runner: WorkloadRunner, name: str, payload: bytes) -> dict[str, Any]:
    body = config_map_body(runner.owner, name, payload, {LABEL_ROLE: "plan"})
    # The shared helper names its key for results; a plan reads better as plan.json.
    for section in ("data", "binaryData"):
        if KEY in (body.get(section) or {}):
            body[section] = {PLAN_KEY: body[section].pop(KEY)}
    return body


def _items_of(runner: WorkloadRunner, cm: dict[str, Any]) -> list[Any]:
    name = cm["metadata"]["name"]
    owners = cm["metadata"].get("ownerReferences") or []
    if not any(o.get("uid") == runner.uid for o in owners):
        # Usually an earlier workload of the same name whose children are still being garbage
        # collected: its plan must not be taken for this one's.
        raise PlanningError(
            FIELD,
            f"ConfigMap {name!r} exists but is not this workload's plan (an earlier workload of the same name "
            "still being deleted?); it is used once it is gone, or delete it",
        )
    renamed = {
        section: {KEY: values[PLAN_KEY]}
        for section in ("data", "binaryData")
        if PLAN_KEY in (values := cm.get(section) or {})
    }
    try:
        items = json.loads(read_payload(renamed))["subtasks"]
    except (ValueError, KeyError, TypeError, OSError, EOFError) as e:
        raise PlanningError(
            FIELD, f"the stored plan in ConfigMap {name!r} is unreadable ({type(e).__name__}); delete it to plan again"
        ) from None
    if not isinstance(items, list):
        raise PlanningError(
            FIELD, f"the stored plan in ConfigMap {name!r} has no subtask list; delete it to plan again"
        )
    return items


async def _api_key(runner: WorkloadRunner, p: PlannerSpec) -> tuple[str | None, str | None]:
    ref = p.api_key_secret_ref
    if ref is None:
        return None, None
    field = f"{FIELD}.apiKeySecretRef"
    try:
        secret = await runner.kube.get(ns_path("v1", runner.namespace, "secrets", ref.name))
    except ApiError as e:
        if e.status == 403:
            raise PlanningError(
                field,
                f"the operator may not read Secret {ref.name!r} in namespace {runner.namespace!r}: "
                "grant its ServiceAccount get on secrets",
            ) from None
        raise
    if secret is None:
        raise PlanningError(
            f"{field}.name",
            f"Secret {ref.name!r} not found in namespace {runner.namespace!r}; create it with the API key "
            f"under key {ref.key!r}",
        )
    data = secret.get("data") or {}
    if ref.key not in data:
        have = ", ".join(sorted(data)) or "none"
        raise PlanningError(f"{field}.key", f"Secret {ref.name!r} has no key {ref.key!r} (has: {have})")
    try:
        # strip(): `echo key | base64` leaves a newline that would break the header.
        key = base64.b64decode(data[ref.key]).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        raise PlanningError(f"{field}.key", f"Secret {ref.name!r} key {ref.key!r} is not text") from None
    if not key:
        raise PlanningError(f"{field}.key", f"Secret {ref.name!r} key {ref.key!r} is empty")
    return key, f"Secret {ref.name!r} (key {ref.key!r})"


async def _context(runner: WorkloadRunner, p: PlannerSpec) -> str | None:
    ref = p.context_config_map_ref
    if ref is None:
        return p.context
    field = f"{FIELD}.contextConfigMapRef"
    cm = await runner.kube.get(ns_path("v1", runner.namespace, "configmaps", ref.name))
    if cm is None:
        raise PlanningError(f"{field}.name", f"ConfigMap {ref.name!r} not found in namespace {runner.namespace!r}")
    data = cm.get("data") or {}
    if ref.key not in data:
        have = ", ".join(sorted(data)) or "none"
        raise PlanningError(f"{field}.key", f"ConfigMap {ref.name!r} has no key {ref.key!r} (has: {have})")
    return str(data[ref.key])


async def _report_planning(runner: WorkloadRunner, p: PlannerSpec) -> None:
    """Status phase Planning while the planner thinks (a model may take a minute)."""
    prev = runner.body.get("status") or {}
    if any(c.get("type") == "Stalled" and c.get("status") == "True" for c in prev.get("conditions") or []):
        # A retry after a failure: the Stalled condition (with the reason to act on) stays until
        # a plan is stored, rather than flapping Stalled -> Planning -> Stalled on every backoff.
        return
    what = f"model {p.model!r} at " if p.model else ""
    status = build(
        phase="Planning",
        reason="Planning",
        message=f"asking the {p.type} planner ({what}{display_url(p.url)}) for subtasks",
        generation=runner.generation,
        total=0,
        active=0,
        agg=None,
        previous=prev,
        start_time=prev.get("startTime") or now_iso(),
    )
    try:
        await runner._write_status(status, final=True)
    except ApiError as e:  # informative only: planning goes on without it
        log.warning("workload %s/%s: status write failed: %s", runner.namespace, runner.name, e)
