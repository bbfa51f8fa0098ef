"""A template's podFailurePolicy: validated like Kubernetes does, rendered behind the operator's own
rule for the final exit code (86) unless the template decides 86 itself, and applied the same way
by the local runner (exit codes only: there are no pod conditions locally)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from apwa.api.models import ParallelWorkloadSpec
from apwa.manifest import ManifestError, parse_workload
from apwa.planning import plan
from apwa.rendering import Owner, RenderError, render_job
from apwa.rendering.failure_policy import action_for

POD = {"spec": {"containers": [{"name": "main", "image": "busybox"}, {"name": "side", "image": "busybox"}]}}
FINAL = {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [86]}}


def codes(action: str, operator: str, values: list[int], container: str | None = None) -> dict:
    on: dict = {"operator": operator, "values": values}
    if container:
        on["containerName"] = container
    return {"action": action, "onExitCodes": on}


DISRUPTION = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


def workload(rules: list[dict]) -> dict:
    template = {"podTemplate": POD, "backoffLimit": 3, "podFailurePolicy": {"rules": rules}}
    spec = {"decomposition": {"range": {"end": 1}}, "templates": {"default": template}}
    return {"apiVersion": "apwa.dev/v1alpha1", "kind": "ParallelWorkload", "metadata": {"name": "w"}, "spec": spec}


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        pytest.param([codes("FailIndex", "In", [3])], "FailIndex needs an Indexed Job", id="fail-index"),
        pytest.param([codes("Retry", "In", [3])], "'FailJob', 'FailIndex', 'Ignore' or 'Count'", id="unknown-action"),
        pytest.param([{"action": "Ignore"}], "exactly one of onExitCodes and onPodConditions", id="no-requirement"),
        pytest.param(
            [{**codes("Ignore", "In", [3]), **DISRUPTION, "action": "Ignore"}],
            "exactly one of onExitCodes and onPodConditions",
            id="both-requirements",
        ),
        pytest.param([codes("Ignore", "In", [0, 3])], "0 cannot be used with operator In", id="zero-with-in"),
        pytest.param([codes("Ignore", "In", [5, 3])], "unique and in ascending order", id="unsorted"),
        pytest.param([codes("Ignore", "In", [])], "at least 1 item", id="no-values"),
        pytest.param([codes("Ignore", "Between", [3])], "'In' or 'NotIn'", id="unknown-operator"),
        pytest.param([codes("Ignore", "In", [3], "nope")], "'nope' is not a container", id="unknown-container"),
        pytest.param([codes("Count", "In", [i]) for i in range(1, 22)], "at most 20 items", id="21-rules"),
    ],
)
def test_invalid_policies_are_refused_with_their_path(rules: list[dict], problem: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse_workload(workload(rules))
    (p,) = e.value.problems
    assert p.startswith("spec.templates.default") and problem in p, p


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param([codes("Count", "NotIn", [0, 1])], id="not-in-with-zero"),
        pytest.param([DISRUPTION], id="pod-condition-status-defaults-to-true"),
        pytest.param([codes("Ignore", "In", [3], "side")], id="named-container"),
    ],
)
def test_valid_policies(rules: list[dict]) -> None:
    parse_workload(workload(rules))


def rendered(rules: list[dict]) -> list[dict]:
    spec = ParallelWorkloadSpec.model_validate(workload(rules)["spec"])
    return render_job(Owner("w"), spec, plan(spec)[0], 1)["spec"]["podFailurePolicy"]["rules"]


@pytest.mark.parametrize(
    ("rules", "want"),
    [
        pytest.param([], [FINAL], id="none-operator-rule-only"),
        pytest.param(
            [DISRUPTION],
            [FINAL, {**DISRUPTION, "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}],
            id="pod-condition-after-operator-rule",
        ),
        pytest.param(
            [codes("Ignore", "In", [3])], [FINAL, codes("Ignore", "In", [3])], id="other-code-after-operator-rule"
        ),
        pytest.param([codes("Count", "In", [86])], [codes("Count", "In", [86])], id="template-decides-86"),
        pytest.param([codes("Ignore", "NotIn", [1])], [codes("Ignore", "NotIn", [1])], id="template-not-in-covers-86"),
        pytest.param(
            [codes("Ignore", "In", [86], "side")],
            [FINAL, codes("Ignore", "In", [86], "side")],
            id="86-of-another-container",
        ),
    ],
)
def test_rendered_rules(rules: list[dict], want: list[dict]) -> None:
    assert rendered(rules) == want


def test_twenty_rules_leave_no_room_for_the_operators_rule() -> None:
    assert len(rendered([codes("Count", "In", [i]) for i in range(1, 20)])) == 20
    with pytest.raises(RenderError, match=r"podFailurePolicy: 20 rules .* use at most 19"):
        rendered([codes("Count", "In", [i]) for i in range(1, 21)])
    assert len(rendered([codes("Count", "In", [i]) for i in range(70, 90)])) == 20  # 86 is among them


@pytest.mark.parametrize(
    ("container", "exit_code", "want"),
    [
        pytest.param("main", 86, "FailJob", id="final"),
        pytest.param("main", 3, "Ignore", id="ignored"),
        pytest.param("side", 3, None, id="other-container"),
        pytest.param("main", 4, "Count", id="not-in"),
        pytest.param("main", 1, None, id="no-rule"),
    ],
)
def test_action_for(container: str, exit_code: int, want: str | None) -> None:
    policy = {"rules": [FINAL, codes("Ignore", "In", [3], "main"), DISRUPTION, codes("Count", "NotIn", [1, 3, 86])]}
    assert action_for(policy, container, exit_code) == want


MANIFEST = """
apiVersion: apwa.dev/v1alpha1
kind: ParallelWorkload
metadata: {name: t}
spec:
  decomposition: {range: {end: 1}}
  templates:
    default:
      backoffLimit: %d
      podFailurePolicy: {rules: %s}
      podTemplate:
        spec:
          containers: [{name: w, image: x, command: ["sh", "-c", %s]}]
"""


def run_local(tmp_path: Path, backoff_limit: int, rules: list[dict], script: str) -> dict:
    path = tmp_path / "w.yaml"
    path.write_text(MANIFEST % (backoff_limit, json.dumps(rules), json.dumps(script)))
    cmd = [sys.executable, "-m", "apwa.cli", "run", "--local", "-q", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return yaml.safe_load(r.stdout)["status"]


def test_local_run_retries_an_ignored_exit_code_without_counting(tmp_path: Path) -> None:
    # Exits 3 on the first three tries, then succeeds: backoffLimit 0 would allow no retry at all.
    n = tmp_path / "tries"
    script = f"echo x >> {n}; [ $(wc -l < {n}) -gt 3 ] || exit 3; echo 1 > $APWA_RESULT_PATH"
    status = run_local(tmp_path, 0, [codes("Ignore", "In", [3])], script)
    assert status["phase"] == "Succeeded" and n.read_text().count("x") == 4


def test_local_run_fails_at_once_on_a_template_failjob(tmp_path: Path) -> None:
    n = tmp_path / "tries"
    status = run_local(tmp_path, 3, [codes("FailJob", "In", [5])], f"echo x >> {n}; exit 5")
    entry = status["failedSubtasks"][0]
    assert (entry["reason"], entry["exitCode"], entry["failedPods"]) == ("PodFailurePolicy", 5, 1)
    assert n.read_text().count("x") == 1
