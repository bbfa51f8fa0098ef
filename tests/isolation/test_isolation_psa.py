"""Pod Security admission `restricted`: the operator's own pod and every example's subtask pods pass.

The lab's namespace carries ``pod-security.kubernetes.io/enforce: restricted``. Pods are created
with a server-side dry run, which runs the API server's admission (Pod Security included) and
stores nothing. ``control``: a pod that weakens the same spec is refused there, so the namespace
really enforces and an accepted pod really passed.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from isolation_lab import KubectlError, Lab, kubectl

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if "planner:" not in p.read_text())


def create_pod(lab: Lab, name: str, spec: dict[str, Any]) -> str:
    """'' when admitted, else the API server's refusal."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": lab.namespace}, "spec": spec}
    try:
        kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
    except KubectlError as e:
        return str(e)
    return ""


def weakened(spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    for c in out["containers"]:
        c.setdefault("securityContext", {})["allowPrivilegeEscalation"] = True
    return out


def operator_pod_spec(namespace: str) -> dict[str, Any]:
    rendered = subprocess.run(
        ["helm", "template", "apwa", str(REPO / "charts" / "apwa"), "--namespace", namespace],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "Deployment")
    return dict(deployment["spec"]["template"]["spec"])


@pytest.mark.isolation("ISO-PSA-01")
@pytest.mark.parametrize("case", ["guarded", "control"])
def test_operator_pod_passes_restricted(lab: Lab, case: str) -> None:
    spec = operator_pod_spec(lab.namespace)
    spec["serviceAccountName"] = "default"  # the chart's own account is not installed here
    refusal = create_pod(lab, "apwa-operator", spec if case == "guarded" else weakened(spec))
    print(f"ISO-PSA-01 {case}: {refusal or 'admitted'}")
    if case == "guarded":
        assert refusal == "", refusal
    else:
        assert "violates PodSecurity" in refusal and "restricted" in refusal, refusal


def rendered_pod_specs(example: Path) -> list[tuple[str, dict[str, Any]]]:
    """The subtask pods of an example, as `apwa plan --render` (the operator's rendering) gives them."""
    apwa = Path(sys.executable).parent / "apwa"
    argv = [str(apwa), "plan", str(example), "--render", "-o", "json"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout
    jobs = [d for d in json.loads(out)["items"] if d["kind"] == "Job"]
    return [(j["metadata"]["name"], j["spec"]["template"]["spec"]) for j in jobs]


@pytest.mark.isolation("ISO-PSA-02")
@pytest.mark.parametrize("case", ["guarded"])
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_subtask_pods_pass_restricted(lab: Lab, example: Path, case: str) -> None:
    refusals = {name: r for name, spec in rendered_pod_specs(example) if (r := create_pod(lab, name, spec))}
    assert refusals == {}


@pytest.mark.isolation("ISO-PSA-02")
@pytest.mark.parametrize("case", ["control"])
def test_unrestricted_subtask_pod_is_refused(lab: Lab, case: str, tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((REPO / "examples" / "range.yaml").read_text()))
    docs[0]["spec"]["isolation"] = {"podSecurity": "Unrestricted"}
    (tmp_path / "range.yaml").write_text(yaml.safe_dump_all(docs))
    (name, spec), *_ = rendered_pod_specs(tmp_path / "range.yaml")
    refusal = create_pod(lab, name, spec)
    print(f"ISO-PSA-02 {case}: {refusal}")
    assert "violates PodSecurity" in refusal and "restricted" in refusal, refusal
