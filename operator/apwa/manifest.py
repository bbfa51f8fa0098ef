"""Reading manifest files the way kubectl would: multi-document YAML, clear errors with paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from apwa import API_VERSION, KIND
from apwa.api.models import ParallelWorkload


class ManifestError(Exception):
    """One or more problems in a manifest, each a line naming the field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__("\n".join(f"{source}: {p}" for p in problems))
        self.source = source
        self.problems = problems


@dataclass
class Manifests:
    workloads: list[ParallelWorkload] = field(default_factory=list)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> data


def format_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for e in err.errors():
        path = prefix
        for part in e["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part not in ("function-after[_end_after_start()]",):
                path += ("." if path else "") + str(part)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{path or '<root>'}: {msg}")
    return lines


def parse_workload(doc: dict[str, Any], source: str = "<manifest>") -> ParallelWorkload:
    try:
        return ParallelWorkload.model_validate(doc)
    except ValidationError as e:
        raise ManifestError(source, format_validation_error(e)) from None


def load(path: str | Path) -> Manifests:
    """Every ParallelWorkload and ConfigMap in a file; other kinds are ignored."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ManifestError(source, [e.strerror or str(e)]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ManifestError(source, [f"invalid YAML: {where}{problem}"]) from None
    out = Manifests()
    problems: list[str] = []
    for n, doc in enumerate(docs):
        if not isinstance(doc, dict):
            problems.append(f"document {n + 1}: expected a mapping, got {type(doc).__name__}")
            continue
        kind = doc.get("kind")
        if kind == KIND or doc.get("apiVersion") == API_VERSION:
            try:
                out.workloads.append(parse_workload(doc, source))
            except ManifestError as e:
                name = (doc.get("metadata") or {}).get("name", f"document {n + 1}")
                problems += [f"{KIND} {name}: {p}" for p in e.problems]
        elif kind == "ConfigMap":
            name = (doc.get("metadata") or {}).get("name")
            if name:
                data = {k: str(v) for k, v in (doc.get("data") or {}).items()}
                out.config_maps[name] = data
    if problems:
        raise ManifestError(source, problems)
    if not out.workloads:
        raise ManifestError(source, [f"no {KIND} found (expected apiVersion {API_VERSION}, kind {KIND})"])
    return out
