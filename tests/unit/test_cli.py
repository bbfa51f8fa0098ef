"""The `apwa` command as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
APWA = [sys.executable, "-m", "apwa.cli"]


def apwa(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*APWA, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "w.yaml"
    p.write_text(text)
    return str(p)


WORKLOAD = """
apiVersion: apwa.dev/v1alpha1
kind: ParallelWorkload
metadata: {name: t}
spec:
  decomposition: %s
  parallelism: %d
  %s
  templates:
    default:
      podTemplate:
        spec:
          containers:
          - name: w
            image: x
            command: ["sh", "-c", %s]
"""


def manifest(decomposition: str, script: str, parallelism: int = 4, extra: str = "") -> str:
    return WORKLOAD % (decomposition, parallelism, extra, json.dumps(script))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(example: Path) -> None:
    r = apwa("validate", str(example))
    assert r.returncode == 0, r.stderr
    assert "is valid" in r.stdout


@pytest.mark.parametrize(
    "example", [e for e in EXAMPLES if e.name not in ("wordcount.yaml", "llm-planned.yaml")], ids=lambda p: p.name
)
def test_examples_run_locally(example: Path) -> None:
    r = apwa("run", "--local", "-q", str(example))
    assert r.returncode == 0, r.stderr + r.stdout
    status = yaml.safe_load(r.stdout)["status"]
    assert status["phase"] == "Succeeded"
    assert status["counts"]["failed"] == 0 and status["counts"]["succeeded"] == status["counts"]["total"]


def test_wordcount_example_counts_this_repository() -> None:
    r = apwa("run", "--local", "-q", "examples/wordcount.yaml")
    assert r.returncode == 0, r.stderr
    result = yaml.safe_load(r.stdout)["status"]["result"]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert result["shards"] == 8
    assert result["files"] == len([f for f in tracked if (ROOT / f).is_file()])
    assert result["lines"] > 1000 and result["words"] > result["lines"]


def test_range_example_reduces_to_the_sum_of_squares() -> None:
    r = apwa("run", "--local", "-q", "examples/range.yaml")
    assert yaml.safe_load(r.stdout)["status"]["result"] == sum(i * i for i in range(0, 30, 3))


def test_plan_outputs() -> None:
    table = apwa("plan", "examples/matrix.yaml")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["INDEX", "TEMPLATE", "ITEM"] and len(lines) == 10
    rows = json.loads(apwa("plan", "examples/items.yaml", "-o", "json").stdout)
    assert [r["template"] for r in rows] == ["default", "default", "default", "large"]
    assert rows[0] == {"index": 0, "template": "default", "item": {"name": "Ada", "lang": "en"}}
    assert (
        yaml.safe_load(apwa("plan", "examples/configmap.yaml", "-o", "yaml").stdout)[2]["item"]["focus"]
        == "bounded status"
    )


def test_plan_render_prints_what_the_operator_creates() -> None:
    docs = list(yaml.safe_load_all(apwa("plan", "examples/shards.yaml", "--render").stdout))
    assert [d["kind"] for d in docs] == ["NetworkPolicy"] + ["Job"] * 6
    assert docs[3]["metadata"]["name"] == "test-shards-2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec: [unclosed", "invalid YAML: line 1"),
        (
            "apiVersion: apwa.dev/v1alpha1\nkind: ParallelWorkload\nmetadata: {name: x}\nspec: {parallelizm: 2}",
            "spec.parallelizm: unknown field",
        ),
        (manifest("{range: {end: 3}, shards: {count: 2}}", "true"), "exactly one of"),
        (manifest("{}", "true"), "got: none"),
        (
            manifest("{items: [1, {template: gpu}]}", "true"),
            "spec.decomposition.items[1]: subtask 1 names template 'gpu'",
        ),
        (manifest("{configMapRef: {name: missing, key: k}}", "true"), "ConfigMap 'missing' is not in the file"),
        (manifest("{range: {end: 200001}}", "true"), "200001 subtasks is more than the maximum of 100000"),
        ("kind: ConfigMap\nmetadata: {name: x}", "no ParallelWorkload found"),
    ],
)
def test_bad_input_gives_one_clear_message(tmp_path: Path, text: str, expected: str) -> None:
    r = apwa("validate", write(tmp_path, text))
    assert r.returncode == 1
    assert expected in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_configmap_json_is_named(tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: '[1, 2'}\n---\n" + manifest(
        "{configMapRef: {name: c, key: k}}", "true"
    )
    r = apwa("plan", write(tmp_path, text))
    assert r.returncode == 1 and "spec.decomposition.configMapRef: not valid JSON" in r.stderr


def test_failure_policy_stops_launching_and_reports(tmp_path: Path) -> None:
    script = (
        'if [ $((APWA_INDEX % 2)) -eq 1 ]; then echo "odd $APWA_INDEX" >&2; exit 3; fi; '
        'echo \\"ok\\" > $APWA_RESULT_PATH'
    )
    r = apwa(
        "run",
        "--local",
        "-q",
        write(tmp_path, manifest("{range: {end: 40}}", script, 1, "failurePolicy: {maxFailedSubtasks: 2}")),
    )
    assert r.returncode == 1
    status = yaml.safe_load(r.stdout)["status"]
    assert status["phase"] == "Failed"
    assert status["counts"]["failed"] == 3 and status["counts"]["pending"] > 0  # stopped early
    # The operator's wording, decided by the same core.
    assert status["message"] == "3 subtasks failed, more than the 2 allowed by spec.failurePolicy"
    assert status["failedSubtasks"][0] == {
        "index": 1,
        "job": "t-1",
        "reason": "Error",
        "message": "odd 1",
        "exitCode": 3,
        "failedPods": 1,
    }


def test_retries_and_deadline(tmp_path: Path) -> None:
    # Fails on the first try, succeeds on the retry (a marker file remembers the first try).
    marker = tmp_path / "tried"
    script = (
        f"if [ ! -e {marker}-$APWA_INDEX ]; then touch {marker}-$APWA_INDEX; exit 1; fi; echo 1 > $APWA_RESULT_PATH"
    )
    text = manifest("{range: {end: 3}}", script).replace("    default:\n", "    default:\n      backoffLimit: 1\n")
    r = apwa("run", "--local", "-q", write(tmp_path, text))
    assert r.returncode == 0, r.stdout
    slow = manifest("{range: {end: 1}}", "sleep 30").replace(
        "    default:\n", "    default:\n      activeDeadlineSeconds: 1\n"
    )
    r = apwa("run", "--local", "-q", write(tmp_path, slow), timeout=20)
    assert yaml.safe_load(r.stdout)["status"]["failedSubtasks"][0]["reason"] == "DeadlineExceeded"


def test_oversize_result_fails_the_subtask(tmp_path: Path) -> None:
    text = manifest("{range: {end: 1}}", "true").replace(
        'command: ["sh", "-c", "true"]',
        "command: [python3, -c, 'from apwa import worker; worker.emit(\"x\" * 5000)']",
    )
    r = apwa("run", "--local", "-q", write(tmp_path, text))
    status = yaml.safe_load(r.stdout)["status"]
    assert status["phase"] == "Failed"
    assert "a termination message holds at most 4096" in status["failedSubtasks"][0]["message"]


def test_ctrl_c_stops_children_and_exits_cleanly(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    script = f"echo $$ > {pids}/$APWA_INDEX; exec sleep 300"
    path = write(tmp_path, manifest("{range: {end: 4}}", script, 2))
    proc = subprocess.Popen(
        [*APWA, "run", "--local", "-q", path], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while len(list(pids.iterdir())) < 2:
        assert time.monotonic() < deadline, "subtasks did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    for f in pids.iterdir():
        pid = int(f.read_text())
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"subtask process {pid} survived Ctrl-C"
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_crd_command_prints_checked_in_file() -> None:
    assert apwa("crd").stdout == (ROOT / "crds" / "apwa.dev_parallelworkloads.yaml").read_text()


def test_a_final_failure_is_not_retried_locally(tmp_path: Path) -> None:
    text = tmp_path / "w.yaml"
    script = (
        "import os; from apwa import worker; "
        f"open('{tmp_path}/attempts-' + str(worker.index()), 'a').write('x'); "
        "worker.fail('bad input', final=True) if worker.index() == 0 else worker.fail('flaky')"
    )
    text.write_text(
        "apiVersion: apwa.dev/v1alpha1\nkind: ParallelWorkload\nmetadata: {name: t}\nspec:\n"
        "  decomposition: {range: {end: 2}}\n  failurePolicy: {maxFailedSubtasks: 2}\n"
        "  templates:\n    default:\n      backoffLimit: 2\n      podTemplate:\n        spec:\n"
        f"          containers: [{{name: w, image: x, command: [python3, -c, {json.dumps(script)}]}}]\n"
    )
    r = apwa("run", "--local", "-q", str(text))
    failed = {f["index"]: f for f in yaml.safe_load(r.stdout)["status"]["failedSubtasks"]}
    assert (failed[0]["reason"], failed[0]["message"], failed[0]["exitCode"]) == ("Final", "bad input", 86)
    assert failed[1]["reason"] == "BackoffLimitExceeded" and failed[1]["message"] == "flaky"
    attempts = {i: len((tmp_path / f"attempts-{i}").read_text()) for i in (0, 1)}
    assert attempts == {0: 1, 1: 3}  # the final one never retried; the other used its backoffLimit
