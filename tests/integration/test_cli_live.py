"""The live CLI against the local control plane: `apwa get`, `apwa watch` (in a real terminal,
tmux, and by exit code), `apwa describe` and `apwa retry`. `apwa logs` needs real containers:
tests/e2e/test_logs_real.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from kubernetes import client
from workloads import Workloads, pod_template, workload

pytestmark = pytest.mark.usefixtures("operator")
REPO = Path(__file__).resolve().parents[2]
APWA = str(Path(sys.executable).parent / "apwa")


def cli_env() -> dict[str, str]:
    """The session's KUBECONFIG (set by the cluster fixture) and this checkout's apwa package."""
    return {**os.environ, "PYTHONPATH": str(REPO / "operator")}


@pytest.fixture
def w(api: client.ApiClient, namespace: str) -> Workloads:
    return Workloads(api, namespace)


def apwa(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([APWA, *args], capture_output=True, text=True, env=cli_env(), timeout=timeout, check=False)


def flaky_templates(delay_ms: str = "100") -> dict[str, Any]:
    env = {"KWOK_OUTCOME": "fail", "KWOK_EXIT_CODE": "3", "KWOK_MESSAGE": "boom {{ index }}", "KWOK_DELAY_MS": delay_ms}
    return {"default": {"podTemplate": pod_template()}, "flaky": {"podTemplate": pod_template(env)}}


def test_get_lists_workloads_with_progress_and_eta(w: Workloads) -> None:
    w.create(workload("g-done", {"range": {"end": 3}}))
    w.create(workload("g-run", {"range": {"end": 50}}, {"KWOK_DELAY_MS": "500"}, parallelism=2))
    w.wait_condition("g-done", "Complete")
    wait_for(lambda: w.get("g-run")["status"]["counts"]["succeeded"] >= 2, 60, "g-run under way")
    out = apwa("get", "-n", w.ns)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "FAILED", "ACTIVE", "ETA", "AGE"]
    by_name = {r.split()[0]: r.split() for r in rows}
    assert by_name["g-done"][1:6] == ["Succeeded", "3/3", "0", "0", "-"]
    run = by_name["g-run"]
    assert run[1] == "Running" and re.fullmatch(r"\d+(s|m\d\ds)", run[5]), run  # an ETA, in seconds or minutes
    one = apwa("get", "g-done", "-n", w.ns)
    assert len(one.stdout.splitlines()) == 2
    missing = apwa("get", "nope", "-n", w.ns)
    assert missing.returncode == 1 and "'nope' not found" in missing.stderr


class Tmux:
    """One detached tmux session running a command in a real terminal (a pty, 160x24)."""

    def __init__(self, command: list[str], exit_file: Path) -> None:
        self.name = f"apwa-test-{uuid.uuid4().hex[:8]}"
        env = " ".join(f"{k}={shlex.quote(cli_env()[k])}" for k in ("KUBECONFIG", "PYTHONPATH", "PATH"))
        # The pane stays after the command ends, so that its last frame can be read.
        script = f"env {env} {shlex.join(command)}; echo $? > {exit_file}; sleep 600"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "160", "-y", "24", script], check=True)

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, check=True
        ).stdout

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, check=False)


@pytest.fixture
def tmux() -> Iterator[Any]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (make testenv installs it with apt-get): no terminal to test apwa watch in")
    sessions: list[Tmux] = []

    def start(command: list[str], exit_file: Path) -> Tmux:
        sessions.append(Tmux(command, exit_file))
        return sessions[-1]

    yield start
    for s in sessions:
        s.kill()


def test_watch_in_a_terminal_shows_a_live_bar_and_exits_0(w: Workloads, tmux: Any, tmp_path: Path) -> None:
    n = 20
    w.create(workload("live", {"range": {"end": n}}, {"KWOK_DELAY_MS": "300"}, parallelism=4))
    exit_file = tmp_path / "exit"
    session = tmux([APWA, "watch", "live", "-n", w.ns], exit_file)
    frames: list[str] = []

    def finished() -> bool:
        frames.append(session.screen())
        return exit_file.exists() and exit_file.read_text().strip() != ""

    try:
        wait_for(finished, 300, "apwa watch to exit", max_interval=0.2)
    finally:
        print("last screen:\n" + (frames[-1] if frames else ""))
    partial = [f for f in frames if (m := re.search(rf"\b(\d+)/{n}\b", f)) and 0 < int(m.group(1)) < n and "━" in f]
    assert partial, f"no frame showed a bar part way (frames: {frames[:3]} ... {frames[-1:]})"
    assert re.search(r"succeeded \d+\s+failed 0\s+active \d+", partial[-1]) and "ETA" in partial[-1]
    assert re.search(r"\d+\.\d/s", "".join(partial)), "a rate per second"
    assert exit_file.read_text().strip() == "0"
    assert f"live: Succeeded: {n}/{n} succeeded, 0 failed" in frames[-1]


TRACED_WATCH = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # urllib3 logs every request line
from apwa.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_watch_follows_a_watch_not_polling(w: Workloads) -> None:
    w.create(workload("pace", {"range": {"end": 12}}, {"KWOK_DELAY_MS": "500"}, parallelism=2))
    out = subprocess.run(
        [sys.executable, "-c", TRACED_WATCH, "watch", "pace", "-n", w.ns],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    requests = re.findall(r'"GET (/apis/apwa\.dev/\S+) HTTP', out.stderr)
    gets = [r for r in requests if r.endswith("/parallelworkloads/pace")]
    watches = [r for r in requests if "watch=true" in r.lower()]
    # One read to start from, then watch requests only (each lasts up to a minute): no polling.
    assert len(gets) == 1 and 1 <= len(watches) <= 3 and len(requests) == len(gets) + len(watches), requests
    assert out.stdout.count("pace: Succeeded: 12/12") == 1


@pytest.mark.parametrize(
    ("name", "env", "args", "code", "says"),
    [
        pytest.param("wf", {"KWOK_OUTCOME": "fail", "KWOK_MESSAGE": "nope"}, [], 1, "wf: Failed", id="failed-exits-1"),
        pytest.param("wt", {"KWOK_OUTCOME": "hold"}, ["--timeout", "3"], 124, "timed out", id="timeout-exits-124"),
    ],
)
def test_watch_exit_code_is_the_outcome(
    w: Workloads, name: str, env: dict[str, str], args: list[str], code: int, says: str
) -> None:
    w.create(workload(name, {"range": {"end": 2}}, env))
    out = apwa("watch", name, "-n", w.ns, *args)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert says in out.stdout


def test_watch_of_a_missing_workload_exits_2(w: Workloads) -> None:
    out = apwa("watch", "nope", "-n", w.ns)
    assert out.returncode == 2 and "'nope' not found" in out.stderr


def test_describe_shows_spec_failures_retries_and_events(w: Workloads) -> None:
    items = [0, {"template": "flaky"}, 2]
    w.create(workload("desc", {"items": items}, templates=flaky_templates(), failurePolicy={"maxFailedSubtasks": 1}))
    w.wait_condition("desc", "Complete")
    out = apwa("describe", "desc", "-n", w.ns)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Decomposition: items: 3" in re.sub(r" +", " ", text) and "flaky (backoffLimit 0)" in text
    failed_row = next(line for line in text.splitlines() if line.split()[:2] == ["1", "desc-1"])
    assert failed_row.split()[2:5] == ["BackoffLimitExceeded", "3", "boom"]
    assert re.search(r"Complete\s+True\s+AllSubtasksFinished", text)
    assert re.search(r"Normal\s+Planned", text) and re.search(r"Normal\s+Succeeded", text)


def test_retry_command_twice_is_one_retry(w: Workloads) -> None:
    templates = flaky_templates(delay_ms="3000")  # the retry still runs when the second command comes
    templates["flaky"]["podTemplate"]["spec"]["containers"][0]["env"].append(
        {"name": "KWOK_RETRY_OUTCOME", "value": "succeed"}
    )
    w.create(workload("rc", {"items": [0, {"template": "flaky"}]}, templates=templates))
    w.wait_condition("rc", "Failed")
    first, second = apwa("retry", "rc", "-n", w.ns), apwa("retry", "rc", "-n", w.ns)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "retry 1 of" in first.stdout and "retry 1 of" in second.stdout
    watched = apwa("watch", "rc", "-n", w.ns, "--timeout", "120")
    assert watched.returncode == 0, watched.stdout
    done = w.get("rc")["status"]
    assert done["counts"]["succeeded"] == 2 and len(done["retry"]["history"]) == 1
    described = apwa("describe", "rc", "-n", w.ns).stdout
    assert (
        re.search(r"Retries\s+ATTEMPT\s+TIME\s+RETRIED", described) and "1 (BackoffLimitExceeded: boom 1)" in described
    )
