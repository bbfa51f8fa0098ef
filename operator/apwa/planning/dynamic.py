"""Dynamic plans: ask the workload's planner (HTTP decomposer or OpenAI-compatible model) once.

`ask` is shared by the operator (controller/dynamic.py, which reads the API key and the context
from the cluster and stores the answer before any Job exists) and by `apwa plan` / `apwa run
--local` (`plan_offline`, which takes them from the environment and the manifest file).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from apwa.api.models import ParallelWorkload, ParallelWorkloadSpec, PlannerSpec
from apwa.common.messages import no_key
from apwa.planning.base import DEFAULT_MAX_SUBTASKS, PlanningError
from apwa.planning.clients import FIELD, make_planner
from apwa.planning.plan import plan

ENV_API_KEY = "APWA_PLANNER_API_KEY"


def planner_of(spec: ParallelWorkloadSpec) -> PlannerSpec:
    p = spec.decomposition.planner
    if p is None:
        raise PlanningError("spec.decomposition", "the workload has no planner")
    return p


async def ask(
    spec: ParallelWorkloadSpec,
    *,
    workload: str,
    namespace: str | None,
    context: str | None,
    api_key: str | None,
    key_source: str | None,
    max_subtasks: int = DEFAULT_MAX_SUBTASKS,
    backoff: float = 0.5,
) -> list[Any]:
    """The planner's subtask items, already checked against the spec (templates exist, size).

    The check runs before anything is stored: a stored plan is never recomputed, so a plan that
    `plan()` would reject must not be stored. For a model, a failed check is fed back for repair.
    """
    p = planner_of(spec)

    def check(items: list[Any]) -> None:
        plan(spec, data=items, max_subtasks=max_subtasks)

    client = make_planner(
        p,
        api_key=api_key,
        key_source=key_source,
        namespace=namespace,
        templates=sorted(spec.templates),
        check=check,
        backoff=backoff,
    )
    return await client.plan(p, workload=workload, context=context)


def offline_context(p: PlannerSpec, config_maps: Mapping[str, Mapping[str, str]] | None) -> str | None:
    ref = p.context_config_map_ref
    if ref is None:
        return p.context
    field = f"{FIELD}.contextConfigMapRef"
    cms = config_maps or {}
    if ref.name not in cms:
        raise PlanningError(
            f"{field}.name", f"ConfigMap {ref.name!r} is not in the file; add it to the file or pass --configmap FILE"
        )
    if ref.key not in cms[ref.name]:
        raise PlanningError(f"{field}.key", no_key("ConfigMap", ref.name, ref.key, cms[ref.name]))
    return cms[ref.name][ref.key]


def plan_offline(workload: ParallelWorkload, config_maps: Mapping[str, Mapping[str, str]] | None = None) -> list[Any]:
    """Ask the planner from this machine, for `apwa plan` and `apwa run --local`.

    The API key comes from $APWA_PLANNER_API_KEY (the operator reads apiKeySecretRef instead);
    the context ConfigMap from `config_maps`, the ConfigMaps of the manifest file.
    """
    p = planner_of(workload.spec)
    api_key: str | None = None
    if p.api_key_secret_ref is not None:
        api_key = os.environ.get(ENV_API_KEY, "").strip()
        if not api_key:
            ref = p.api_key_secret_ref
            raise PlanningError(
                f"{FIELD}.apiKeySecretRef",
                f"the planner needs the API key that the operator reads from Secret {ref.name!r} (key {ref.key!r}); "
                f"to plan from this machine, export {ENV_API_KEY}",
            )
    context = offline_context(p, config_maps)
    return asyncio.run(
        ask(
            workload.spec,
            workload=workload.metadata.name,
            namespace=workload.metadata.namespace,
            context=context,
            api_key=api_key,
            key_source=f"the environment variable {ENV_API_KEY}",
        )
    )
