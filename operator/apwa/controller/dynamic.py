"""The operator side of dynamic plans: asked once, stored before the first Job, never recomputed.

The plan lives in ConfigMap `<workload>-plan` (label apwa.dev/role=plan, owned by the workload,
gzip-compressed when large). Every run of the operator reads it first, so a restart anywhere
after the planner answered (even before the first Job) asks nothing again and builds the same
subtasks. Two runs racing to store (an old operator still finishing while a new one starts)
resolve through the API server: creation is atomic, and the loser adopts the winner's plan.
`keep_plan` is that mechanism for any plan computed once; a plan too big for the ConfigMap
(inputs listed from a store, controller/inputs.py) goes through an `Offload` (an object in the
bucket) and the ConfigMap holds a pointer to it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from apwa.api.models import ParallelWorkloadSpec, PlannerSpec
from apwa.api.vocabulary import Role
from apwa.clients.http import display_url
from apwa.clients.planners import ask
from apwa.common.messages import no_key
from apwa.controller.store import KEY, config_map_body, read_payload
from apwa.kube.client import ApiError, Kube, ns_path
from apwa.planning.base import PlanningError
from apwa.planning.contract import FIELD
from apwa.planning.dynamic import planner_of
from apwa.rendering import LABEL_ROLE, Owner, child_name
from apwa.status import now_iso

log = logging.getLogger("apwa.planner")

PLAN_KEY = "plan.json"
# A ConfigMap holds at most 1 MiB; keep room for metadata. Past this the store would fail on
# every retry, so it is reported as a planning problem instead.
MAX_STORED_BYTES = 1000 * 1024


@dataclass(frozen=True)
class PlanContext:
    """What asking and storing a plan needs of its workload's loop (and nothing more)."""

    kube: Kube
    owner: Owner
    max_subtasks: int
    # Writes phase Planning with this description of the planner, while it thinks.
    report_planning: Callable[[str], Awaitable[None]]

    @property
    def name(self) -> str:
        return self.owner.name

    @property
    def namespace(self) -> str:
        assert self.owner.namespace, "a workload on the cluster has a namespace"
        return self.owner.namespace

    @property
    def uid(self) -> str | None:
        return self.owner.uid


def plan_config_map_name(workload: str) -> str:
    return child_name(workload, "plan")


class Offload(Protocol):
    """Somewhere to keep a plan too big for its ConfigMap; the ConfigMap then holds the pointer
    that `put` returns, and is still what decides (created once, atomically) which plan it is."""

    async def put(self, payload: bytes) -> dict[str, Any]: ...

    async def get(self, pointer: dict[str, Any]) -> dict[str, Any]:
        """The stored document; PlanningError (or Stalled) naming the object when it can't be had."""
        ...


# A header for the stored document (what made the plan) and the plan's items.
Compute = Callable[[], Awaitable[tuple[dict[str, Any], list[Any]]]]


async def stored_plan(ctx: PlanContext, spec: ParallelWorkloadSpec) -> list[Any]:
    """The workload's plan items: the stored ones, else the planner's answer, stored first."""
    p = planner_of(spec)

    async def ask_planner() -> tuple[dict[str, Any], list[Any]]:
        api_key, key_source = await _api_key(ctx, p)
        context = await _context(ctx, p)
        what = f"model {p.model!r} at " if p.model else ""
        await ctx.report_planning(f"{p.type} planner ({what}{display_url(p.url)})")
        items = await ask(
            spec,
            workload=ctx.name,
            namespace=ctx.namespace,
            context=context,
            api_key=api_key,
            key_source=key_source,
            max_subtasks=ctx.max_subtasks,
        )
        planner = {"type": p.type, "url": display_url(p.url), **({"model": p.model} if p.model else {})}
        return {"planner": planner}, items

    def too_big(count: int, stored: int) -> PlanningError:
        return PlanningError(
            f"{FIELD}.maxSubtasks",
            f"the plan of {count} subtasks takes {stored} bytes even compressed, more than a ConfigMap holds; "
            f"lower {FIELD}.maxSubtasks or have the planner return shorter subtasks",
        )

    return await keep_plan(ctx, FIELD, ask_planner, too_big=too_big)


async def keep_plan(
    ctx: PlanContext,
    field: str,
    compute: Compute,
    *,
    too_big: Callable[[int, int], PlanningError] | None = None,
    offload: Offload | None = None,
) -> list[Any]:
    """The stored plan's items, else `compute`'s, stored first (in ConfigMap `<workload>-plan`;
    through `offload` with a pointer in the ConfigMap when they don't fit). `field` names the
    spec field that problems are reported under."""
    name = plan_config_map_name(ctx.name)
    path = ns_path("v1", ctx.namespace, "configmaps")
    existing = await ctx.kube.get(f"{path}/{name}")
    if existing is not None:
        return await _items_of(ctx, existing, field, offload)
    header, items = await compute()
    document = {**header, "plannedAt": now_iso()}
    payload = _json({**document, "subtasks": items})
    body = _plan_body(ctx, name, payload)
    stored = len(json.dumps(body.get("data") or body.get("binaryData")))
    if stored > MAX_STORED_BYTES:
        if offload is None:
            if too_big is not None:
                raise too_big(len(items), stored)
            raise PlanningError(
                field, f"the plan of {len(items)} subtasks takes {stored} bytes, more than a ConfigMap holds"
            )
        pointer = await offload.put(payload)
        body = _plan_body(ctx, name, _json({**document, "subtaskCount": len(items), "storedAs": pointer}))
    try:
        created, _ = await ctx.kube.create(path, body)
    except ApiError as e:
        if e.status in (400, 413, 422):
            raise PlanningError(field, f"storing the plan in ConfigMap {name!r} was refused: {e.message}") from None
        raise
    if created:
        log.info("workload %s/%s: stored a plan of %d subtasks in %s", ctx.namespace, ctx.name, len(items), name)
        return items
    # Another run of the operator stored its plan first: that one is the plan (it may already
    # have Jobs), this answer is dropped.
    existing = await ctx.kube.get(f"{path}/{name}")
    if existing is None:
        raise PlanningError(field, f"the stored plan {name!r} disappeared while being read; planning again")
    log.info("workload %s/%s: another run stored the plan first; using it", ctx.namespace, ctx.name)
    return await _items_of(ctx, existing, field, offload)


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _plan_body(ctx: PlanContext, name: str, payload: bytes) -> dict[str, Any]:
    body = config_map_body(ctx.owner, name, payload, {LABEL_ROLE: Role.PLAN})
    # The shared helper names its key for results; a plan reads better as plan.json.
    for section in ("data", "binaryData"):
        if KEY in (body.get(section) or {}):
            body[section] = {PLAN_KEY: body[section].pop(KEY)}
    return body


async def _items_of(ctx: PlanContext, cm: dict[str, Any], field: str, offload: Offload | None) -> list[Any]:
    name = cm["metadata"]["name"]
    owners = cm["metadata"].get("ownerReferences") or []
    if not any(o.get("uid") == ctx.uid for o in owners):
        # Usually an earlier workload of the same name whose children are still being garbage
        # collected: its plan must not be taken for this one's.
        raise PlanningError(
            field,
            f"ConfigMap {name!r} exists but is not this workload's plan (an earlier workload of the same name "
            "still being deleted?); it is used once it is gone, or delete it",
        )
    renamed = {
        section: {KEY: values[PLAN_KEY]}
        for section in ("data", "binaryData")
        if PLAN_KEY in (values := cm.get(section) or {})
    }
    unreadable = f"the stored plan in ConfigMap {name!r} is unreadable"
    try:
        document = json.loads(read_payload(renamed))
        pointer = document.get("storedAs") if offload is not None else None
    except (ValueError, TypeError, AttributeError, OSError, EOFError) as e:
        raise PlanningError(field, f"{unreadable} ({type(e).__name__}); delete it to plan again") from None
    if pointer is not None:
        assert offload is not None
        document = await offload.get(pointer)  # its own errors name the object
    try:
        items = document["subtasks"]
    except (KeyError, TypeError) as e:
        raise PlanningError(field, f"{unreadable} ({type(e).__name__}); delete it to plan again") from None
    if not isinstance(items, list):
        raise PlanningError(
            field, f"the stored plan in ConfigMap {name!r} has no subtask list; delete it to plan again"
        )
    return items


async def _api_key(ctx: PlanContext, p: PlannerSpec) -> tuple[str | None, str | None]:
    ref = p.api_key_secret_ref
    if ref is None:
        return None, None
    field = f"{FIELD}.apiKeySecretRef"
    try:
        secret = await ctx.kube.get(ns_path("v1", ctx.namespace, "secrets", ref.name))
    except ApiError as e:
        if e.status == 403:
            raise PlanningError(
                field,
                f"the operator may not read Secret {ref.name!r} in namespace {ctx.namespace!r}: "
                "add it to the chart value rbac.secretNames "
                f"(helm upgrade ... --set 'rbac.secretNames={{{ref.name}}}')",
            ) from None
        raise
    if secret is None:
        raise PlanningError(
            f"{field}.name",
            f"Secret {ref.name!r} not found in namespace {ctx.namespace!r}; create it with the API key "
            f"under key {ref.key!r}",
        )
    data = secret.get("data") or {}
    if ref.key not in data:
        raise PlanningError(f"{field}.key", no_key("Secret", ref.name, ref.key, data))
    try:
        # strip(): `echo key | base64` leaves a newline that would break the header.
        key = base64.b64decode(data[ref.key]).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        raise PlanningError(f"{field}.key", f"Secret {ref.name!r} key {ref.key!r} is not text") from None
    if not key:
        raise PlanningError(f"{field}.key", f"Secret {ref.name!r} key {ref.key!r} is empty")
    return key, f"Secret {ref.name!r} (key {ref.key!r})"


async def _context(ctx: PlanContext, p: PlannerSpec) -> str | None:
    ref = p.context_config_map_ref
    if ref is None:
        return p.context
    field = f"{FIELD}.contextConfigMapRef"
    cm = await ctx.kube.get(ns_path("v1", ctx.namespace, "configmaps", ref.name))
    if cm is None:
        raise PlanningError(f"{field}.name", f"ConfigMap {ref.name!r} not found in namespace {ctx.namespace!r}")
    data = cm.get("data") or {}
    if ref.key not in data:
        raise PlanningError(f"{field}.key", no_key("ConfigMap", ref.name, ref.key, data))
    return str(data[ref.key])
