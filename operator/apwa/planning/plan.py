from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apwa.api.models import DEFAULT_TEMPLATE, ParallelWorkloadSpec
from apwa.planning import configmap, items, matrix, ranges, shards
from apwa.planning.base import DEFAULT_MAX_SUBTASKS, PlanningError, Subtask

_FIELD = "spec.decomposition"


def plan_count(spec: ParallelWorkloadSpec, data: list[Any] | None = None) -> int:
    """How many subtasks `plan` would return, without building them."""
    d = spec.decomposition
    if d.range is not None:
        return ranges.count(d.range)
    if d.shards is not None:
        return d.shards.count
    if d.matrix is not None:
        return matrix.count(d.matrix)
    if d.items is not None:
        return len(d.items)
    return len(data or [])


def plan(
    spec: ParallelWorkloadSpec,
    *,
    data: list[Any] | str | None = None,
    max_subtasks: int = DEFAULT_MAX_SUBTASKS,
) -> list[Subtask]:
    """Expand the decomposition into subtasks.

    `data` supplies the items of data-driven strategies: the ConfigMap entry's text (or parsed
    list) for configMapRef, the stored plan for planner. Raises PlanningError naming the field.
    """
    d = spec.decomposition
    strategy = d.strategy
    field = f"{_FIELD}.{strategy}"
    values: Iterable[Any]
    if strategy == "configMapRef":
        assert d.config_map_ref is not None
        if data is None:
            raise PlanningError(field, "the ConfigMap's data was not provided")
        if isinstance(data, str):
            data = configmap.parse(data, d.config_map_ref.format, field=field)
        values = data
    elif strategy in ("planner", "objects"):
        if data is None:
            raise PlanningError(field, "the workload has no stored plan yet")
        if isinstance(data, str):
            raise PlanningError(field, "a stored plan must be a list of items")
        values = data
    else:
        n = plan_count(spec)
        if n > max_subtasks:
            raise PlanningError(field, f"{n} subtasks is more than the maximum of {max_subtasks}")
        values = {
            "items": lambda: items.expand(d.items or []),
            "range": lambda: ranges.expand(d.range),  # type: ignore[arg-type]
            "shards": lambda: shards.expand(d.shards),  # type: ignore[arg-type]
            "matrix": lambda: matrix.expand(d.matrix or {}),
        }[strategy]()
    out: list[Subtask] = []
    templates = spec.templates
    for index, item in enumerate(values):
        if index >= max_subtasks:
            raise PlanningError(field, f"more than the maximum of {max_subtasks} subtasks")
        template = template_of(item)
        if template not in templates:
            where = f"{field}[{index}]" if strategy in ("items", "configMapRef", "planner") else field
            if template == DEFAULT_TEMPLATE:
                raise PlanningError(where, f"subtask {index} uses the 'default' template, which spec.templates lacks")
            raise PlanningError(
                where,
                f"subtask {index} names template {template!r}, which is not in spec.templates "
                f"(have: {', '.join(sorted(templates))})",
            )
        out.append(Subtask(index=index, item=item, template=template))
    if not out:
        raise PlanningError(field, "the decomposition produced no subtasks")
    return out


def template_of(item: Any) -> str:
    if isinstance(item, dict):
        name = item.get("template")
        if isinstance(name, str) and name:
            return name
    return DEFAULT_TEMPLATE
