"""The restricted pod: what a subtask's process can see and do, read from inside the real pod.

``guarded``: a subtask pod of a workload with the default isolation; ``control``: the pod of a
workload that relaxes exactly that guard (serviceAccountToken: true, readOnlyRootFilesystem: false,
or podSecurity: Unrestricted running as root), where the same check must come out the other way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from isolation_lab import Lab


@dataclass(frozen=True)
class PodCheck:
    iso: str
    name: str
    control: str  # the relaxed workload's pod
    holds: Callable[[dict[str, Any]], bool]  # the guarantee, on the probe's facts


ROWS = [
    PodCheck("ISO-POD-01", "no-service-account-token", "token/0", lambda f: f["token"] is False),
    PodCheck("ISO-POD-02", "non-root", "loose/0", lambda f: f["uid"] != 0),
    PodCheck("ISO-POD-03", "no-privilege-escalation", "loose/0", lambda f: f["noNewPrivs"] == 1),
    PodCheck("ISO-POD-04", "all-capabilities-dropped", "loose/0", lambda f: f["capBnd"] == 0 and f["capEff"] == 0),
    PodCheck("ISO-POD-05", "seccomp-runtime-default", "loose/0", lambda f: f["seccomp"] == 2),
    PodCheck(
        "ISO-POD-06",
        "read-only-root-filesystem",
        "writable/0",
        lambda f: f["rootMount"] == "ro" and f["writeRoot"] == "EROFS" and f["writeTmp"] == "written",
    ),
]


@pytest.mark.parametrize("case", ["guarded", "control"])
@pytest.mark.parametrize(
    "row", [pytest.param(r, marks=pytest.mark.isolation(r.iso), id=f"{r.iso}-{r.name}") for r in ROWS]
)
def test_pod_restriction(lab: Lab, row: PodCheck, case: str) -> None:
    source = "alpha/0" if case == "guarded" else row.control
    facts = lab.probe(source, "pod")
    print(f"{row.iso} {case}: {source} -> {facts}")
    assert row.holds(facts) is (case == "guarded"), f"{row.iso} {row.name} in {source}: {facts}"
