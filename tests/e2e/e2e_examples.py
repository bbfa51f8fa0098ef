"""What both end-to-end flows (kind, and the real node of this machine) do with examples/: put
every container on the worker image, apply, wait for the outcome, and compute the same example
with `apwa run --local` for comparison."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from helpers import wait_for  # noqa: E402  (the shared polling helper lives with the integration tests)
from real_node import E2E_PREFIX  # noqa: E402  (the namespaces the e2e operators handle)

WORKLOAD_TIMEOUT = 600.0


@contextmanager
def example_namespace(kubectl: Callable[..., Any], what: str = "") -> Iterator[str]:
    """A fresh namespace for one example (deleted afterwards, without waiting)."""
    ns = f"{E2E_PREFIX}{what}{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    try:
        yield ns
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")


def needs_a_model(example: Path) -> bool:
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    return any(
        "planner" in (d.get("spec") or {}).get("decomposition", {}) for d in docs if d["kind"] == "ParallelWorkload"
    )


# Every example except those planned by a model server, which these clusters do not have
# (tests/integration/test_planner.py covers planners against a local stand-in).
EXAMPLES = [p for p in sorted((ROOT / "examples").glob("*.yaml")) if not needs_a_model(p)]


def with_image(doc: dict[str, Any], image: str, place: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """The example with every subtask/reduce container on the worker image (python:3.11-slim has
    no apwa package and runs as root, which the subtasks' runAsNonRoot refuses), never pulled,
    and its pods placed by `place` (the real node's selector and toleration)."""
    if doc.get("kind") == "ParallelWorkload":
        for template in doc["spec"]["templates"].values():
            spec = template["podTemplate"]["spec"]
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                c["image"] = image
                c["imagePullPolicy"] = "Never"
            if place:
                place(spec)
    return doc


def example_docs(example: Path, image: str, place: Callable[[dict[str, Any]], Any] | None = None) -> str:
    docs = [with_image(d, image, place) for d in yaml.safe_load_all(example.read_text()) if d]
    return yaml.safe_dump_all(docs)


def workload_name(example: Path) -> str:
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    return next(d["metadata"]["name"] for d in docs if d["kind"] == "ParallelWorkload")


def wait_finished(get: Callable[[], dict[str, Any]], what: str, timeout: float = WORKLOAD_TIMEOUT) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        w = get()
        conds = {c["type"]: c["status"] for c in (w.get("status") or {}).get("conditions") or []}
        return w if "True" in (conds.get("Complete"), conds.get("Failed")) else None

    return wait_for(finished, timeout, f"{what} Complete or Failed", max_interval=3)


def local_result(example: Path, env: dict[str, str] | None = None) -> Any:
    """The same example run by `apwa run --local`: the result the cluster must reproduce."""
    import os

    proc = subprocess.run(
        [str(Path(sys.executable).parent / "apwa"), "run", "--local", "-q", str(example)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=True,
    )
    return yaml.safe_load(proc.stdout)["status"]["result"]


def extract_source_tree(archive: Path, dest: Path) -> Path:
    """The worker image's /src (what examples/wordcount.yaml counts there), from its OCI archive."""
    with tarfile.open(archive) as outer:
        index = json.load(outer.extractfile("index.json"))  # type: ignore[arg-type]
        manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.load(outer.extractfile(f"blobs/sha256/{manifest_digest}"))  # type: ignore[arg-type]
        for layer in manifest["layers"]:
            blob = outer.extractfile(f"blobs/sha256/{layer['digest'].split(':', 1)[1]}")
            assert blob is not None
            with tarfile.open(fileobj=blob, mode="r|*") as inner:
                for member in inner:
                    name = member.name.lstrip("./")
                    if name == "src" or name.startswith("src/"):
                        if member.isfile() or member.isdir():
                            inner.extract(member, dest, filter="data")
    return dest / "src"
