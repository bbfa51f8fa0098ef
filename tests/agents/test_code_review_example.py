"""examples/agents/code-review.yaml, run as written by `apwa run --local` against the scripted
model server: one subtask per module, a merged report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from apwa.modelstub import DEFAULT_PORT, ModelStub

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/agents/code-review.yaml"


def modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "operator/apwa").rglob("*.py") if p.name != "__init__.py")


def workload() -> dict:
    return next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "ParallelWorkload")


def test_the_example_lists_every_module_of_the_repository() -> None:
    assert workload()["spec"]["decomposition"]["items"] == modules(), "regenerate the list (see the file's header)"


def test_the_example_reviews_every_module_and_merges_the_findings() -> None:
    # The example points at make model-stub's address; the stub takes that port for this run.
    with ModelStub(port=DEFAULT_PORT) as stub:
        done = subprocess.run(
            [sys.executable, "-m", "apwa.cli", "run", "--local", str(EXAMPLE), "--quiet"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = yaml.safe_load(done.stdout)["status"]
    n = len(modules())
    assert status["phase"] == "Succeeded"
    assert status["result"]["reviewed"] == n and status["result"]["failed"] == []
    assert status["result"]["counts"]["info"] == n  # the stub's one finding per module
    prompts = [r.body["messages"][-1]["content"] for r in stub.requests]
    asked = {p.removeprefix("Review the Python module ").split(" ", 1)[0] for p in prompts}
    assert asked == set(modules()) and len(prompts) == n
    assert all(
        f"\n\n--- {m} ---\n{(ROOT / m).read_text()}" in p for m, p in zip(sorted(asked), sorted(prompts), strict=True)
    )
