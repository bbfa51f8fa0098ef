"""The import contracts (.importlinter) catch the imports that hide: inside functions and under
TYPE_CHECKING. Each row injects one such import into a copy of the package and runs lint-imports
on the copy with the project's own configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"

LAZY = "\n\ndef _sneaky() -> None:\n    from {target} import {name}  # noqa: F401\n"
TYPE_ONLY = "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from {target} import {name}  # noqa: F401\n"

INJECTIONS = [
    # name, module file, snippet, target module, name, contract expected to break
    ("lazy-upward-import", "core/tally.py", LAZY, "apwa.controller.workload", "WorkloadRunner", "apwa is layered"),
    (
        "type-checking-circle",
        "controller/dynamic.py",
        TYPE_ONLY,
        "apwa.controller.workload",
        "WorkloadRunner",
        "operator's modules are layered",
    ),
    ("lazy-network-in-core", "core/decide.py", LAZY, "httpx", "AsyncClient", "are pure"),
    ("client-knows-workloads", "clients/openai.py", TYPE_ONLY, "apwa.planning", "plan", "know nothing of workloads"),
]


def lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    # The copy shadows the installed package; wide columns keep each contract on one line.
    env = {**os.environ, "PYTHONPATH": str(package_root), "COLUMNS": "300"}
    # The project's config, found in the working directory as `make lint` finds it.
    shutil.copy(ROOT / ".importlinter", package_root / ".importlinter")
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=package_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "operator" / "apwa", tmp_path / "apwa", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_package_as_it_is_keeps_every_contract(copy: Path) -> None:
    r = lint(copy)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("module", "snippet", "target", "name", "contract"), [pytest.param(*r[1:], id=r[0]) for r in INJECTIONS]
)
def test_hidden_imports_break_the_contract(
    copy: Path, module: str, snippet: str, target: str, name: str, contract: str
) -> None:
    path = copy / "apwa" / module
    path.write_text(path.read_text() + snippet.format(target=target, name=name))
    r = lint(copy)
    assert r.returncode == 1, r.stdout
    broken = [line for line in r.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), r.stdout
