"""Items held in a ConfigMap entry: one JSON array, or JSON lines. Fetching is the caller's job."""

from __future__ import annotations

import json
from typing import Any

from apwa.common import kjson
from apwa.planning.base import PlanningError


def parse(text: str, fmt: str = "Auto", *, field: str = "spec.decomposition.configMapRef") -> list[Any]:
    if fmt == "Auto":
        fmt = "JSON" if text.lstrip().startswith("[") else "JSONLines"
    if fmt == "JSON":
        try:
            value = kjson.loads(text)  # each item goes into a Job: it must be JSON Kubernetes carries
        except json.JSONDecodeError as e:
            raise PlanningError(field, f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
        except kjson.UnfitJson as e:
            raise PlanningError(field, str(e)) from None
        if not isinstance(value, list):
            raise PlanningError(field, f"expected a JSON array, got {type(value).__name__}")
        return value
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(kjson.loads(line))
        except json.JSONDecodeError as e:
            raise PlanningError(field, f"line {n} is not valid JSON: {e.msg} (column {e.colno})") from None
        except kjson.UnfitJson as e:
            raise PlanningError(field, f"line {n}: {e}") from None
    return items
