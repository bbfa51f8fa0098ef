"""Dynamic plans, the pure part: which planner a spec names, and the context it is given when
planned from this machine. The asking itself is apwa.clients.planners (`ask`, `plan_offline`).
"""

from __future__ import annotations

from collections.abc import Mapping

from apwa.api.models import ParallelWorkloadSpec, PlannerSpec
from apwa.common.messages import no_key
from apwa.planning.base import PlanningError
from apwa.planning.contract import FIELD

ENV_API_KEY = "APWA_PLANNER_API_KEY"


def planner_of(spec: ParallelWorkloadSpec) -> PlannerSpec:
    p = spec.decomposition.planner
    if p is None:
        raise PlanningError("spec.decomposition", "the workload has no planner")
    return p


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
