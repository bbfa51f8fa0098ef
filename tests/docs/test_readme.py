"""The README's shell commands, as written: every command of every ```sh block is either run here
(it needs neither Docker, nor a registry, nor a cluster) or listed below with what it needs, so a
new command has to be placed before this passes. And no command names an image that does not
exist: the ghcr.io names are what a release will push, and none has been cut.

The runnable commands of a block run in one bash, in order (so `OP=$(...)` feeds the next line),
from the repository root with .venv/bin and the test environment's helm on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# (pattern of a command, None: run it | what it needs: not run here). First match wins.
RULES: list[tuple[str, str | None]] = [
    (r"make test$", "is the test suite itself"),
    (r"make example$", None),
    (r"make chart-package$", None),
    (r"helm template ", None),
    (r"apwa run --local examples/\S+\.yaml$", None),
    (r"\w+=\$\(bash hack/images\.sh refs \w+ \| awk '\{print \$2\}'\)$", None),
    (r"make images$", "root and debootstrap (tests/images builds and checks the images)"),
    (r'eval "\$\(make -s cluster( REAL_NODE=1)? \| tail -n 1\)"$', "starts a cluster (tests/integration)"),
    (r"make cluster-down$", "a cluster"),
    (r"\.venv/bin/apwa operator &$", "a cluster"),
    (r"\.venv/bin/apwa (get|watch|describe|logs|retry) ", "a cluster (tests/integration/test_cli_live.py)"),
    (r"kubectl ", "a cluster"),
    (r"helm (install|upgrade) ", "a cluster and the images loaded into it"),
    (r"sed .* \| kubectl ", "a cluster"),
]


def sh_blocks() -> list[list[str]]:
    """The commands of each ```sh block: continuation lines joined, trailing `  # comments` dropped."""
    blocks = re.findall(r"(?ms)^```sh\n(.*?)^```", README.read_text())
    out = []
    for block in blocks:
        commands = []
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
        out.append(commands)
    return out


def rule_for(command: str) -> tuple[str, str | None] | None:
    return next(((p, need) for p, need in RULES if re.match(p, command)), None)


COMMANDS = [c for block in sh_blocks() for c in block]


def test_every_readme_command_is_run_here_or_says_what_it_needs() -> None:
    assert COMMANDS, "no ```sh blocks found in README.md"
    unplaced = [c for c in COMMANDS if rule_for(c) is None]
    assert not unplaced, f"README commands this test does not place (add them to RULES): {unplaced}"


def test_no_command_names_an_image_that_does_not_exist() -> None:
    for c in COMMANDS:
        assert "ghcr.io/" not in c, f"{c!r}: no release exists, so no ghcr.io image does; use a built one"


def test_the_readme_says_the_release_pipeline_cannot_run_here() -> None:
    text = README.read_text()
    assert "cannot run here" in text and "make images" in text and "make chart-package" in text


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    proc = subprocess.run(["bash", "hack/testenv-build.sh", "helm"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    helm_dir = proc.stdout.strip().splitlines()[-1]
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([venv_bin, helm_dir, os.environ.get("PATH", "")])}


RUNNABLE = [(i, [c for c in block if (rule_for(c) or ("", "?"))[1] is None]) for i, block in enumerate(sh_blocks())]


@pytest.mark.parametrize(
    "commands", [cmds for _, cmds in RUNNABLE if cmds], ids=[f"block{i}" for i, cmds in RUNNABLE if cmds]
)
def test_runnable_commands_work_as_written(env: dict[str, str], commands: list[str]) -> None:
    script = "set -euo pipefail\n" + "\n".join(commands)
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{commands}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    if any(c.startswith("helm template") for c in commands):
        assert 'image: "apwa.local/apwa-operator:dev"' in proc.stdout
    if "make chart-package" in commands:
        assert list((ROOT / "dist").glob("apwa-*.tgz"))
