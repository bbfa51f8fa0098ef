"""Network isolation of subtask pods, probed from inside real pods on the real node.

Each row is one probe. ``guarded``: the source's (or target's) workload NetworkPolicy, rendered by
apwa, is applied and the probe must give ``guarded``; ``control``: no policy at all and the same
probe must give ``control``. A row whose two outcomes are equal is a positive guarantee (the guard
must not block it); the id's other rows prove that the probe can tell the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from isolation_lab import BANNER, BLOCKED, CLUSTER_NAME, NOT_RESOLVED, OPEN, RESOLVED, Lab


@dataclass(frozen=True)
class Probe:
    iso: str  # the guarantee's id in docs/isolation.md
    name: str
    source: str  # "<workload>/<index>" or "bystander"
    target: str  # "tcp:<pod ref>:<port>", "tcp:api-service", "tcp:api-endpoint" or "dns:<name>"
    guards: tuple[str, ...]  # the workloads whose NetworkPolicy is applied in the guarded case
    guarded: frozenset[str]
    control: frozenset[str]


RESOLVE = f"dns:{CLUSTER_NAME}"
ROWS = [
    Probe("ISO-NET-01", "subtask-to-same-workload", "alpha/0", "tcp:alpha/1:8080", ("alpha",), BLOCKED, OPEN),
    Probe("ISO-NET-02", "subtask-to-other-workload", "alpha/0", "tcp:beta/0:8080", ("alpha",), BLOCKED, OPEN),
    Probe("ISO-NET-03", "subtask-to-non-apwa-pod", "alpha/0", "tcp:bystander:8080", ("alpha",), BLOCKED, OPEN),
    Probe("ISO-NET-04", "subtask-to-api-service", "alpha/0", "tcp:api-service", ("alpha",), BLOCKED, OPEN),
    Probe("ISO-NET-04", "subtask-to-api-endpoint", "alpha/0", "tcp:api-endpoint", ("alpha",), BLOCKED, OPEN),
    Probe("ISO-NET-05", "egress-none-resolves-nothing", "alpha/0", RESOLVE, ("alpha",), NOT_RESOLVED, RESOLVED),
    Probe("ISO-NET-06", "egress-dns-resolves", "dns/0", RESOLVE, ("dns",), RESOLVED, RESOLVED),
    Probe("ISO-NET-06", "egress-dns-to-non-apwa-pod", "dns/0", "tcp:bystander:8080", ("dns",), BLOCKED, OPEN),
    Probe("ISO-NET-06", "egress-dns-to-api-service", "dns/0", "tcp:api-service", ("dns",), BLOCKED, OPEN),
    Probe("ISO-NET-07", "custom-allowed-cidr-and-port", "custom/0", "tcp:bystander:8080", ("custom",), OPEN, OPEN),
    Probe("ISO-NET-07", "custom-resolves", "custom/0", RESOLVE, ("custom",), RESOLVED, RESOLVED),
    Probe("ISO-NET-07", "custom-other-port", "custom/0", "tcp:bystander:8081", ("custom",), BLOCKED, OPEN),
    Probe("ISO-NET-07", "custom-other-pod", "custom/0", "tcp:beta/0:8080", ("custom",), BLOCKED, OPEN),
    Probe("ISO-NET-07", "custom-to-api-service", "custom/0", "tcp:api-service", ("custom",), BLOCKED, OPEN),
    Probe("ISO-NET-08", "ingress-from-non-apwa-pod", "bystander", "tcp:alpha/0:8080", ("alpha",), BLOCKED, OPEN),
    Probe("ISO-NET-08", "ingress-from-other-workload", "beta/0", "tcp:alpha/0:8080", ("alpha",), BLOCKED, OPEN),
    Probe("ISO-NET-08", "ingress-from-same-workload", "alpha/1", "tcp:alpha/0:8081", ("alpha",), BLOCKED, OPEN),
]


def probe_args(lab: Lab, target: str) -> tuple[str, ...]:
    kind, _, what = target.partition(":")
    if kind == "dns":
        return ("dns", what)
    host, port = lab.address(what)
    return ("tcp", host, str(port))


@pytest.mark.parametrize("case", ["guarded", "control"])
@pytest.mark.parametrize(
    "row", [pytest.param(r, marks=pytest.mark.isolation(r.iso), id=f"{r.iso}-{r.name}") for r in ROWS]
)
def test_network_probe(lab: Lab, row: Probe, case: str) -> None:
    guarded = case == "guarded"
    lab.isolate(*(row.guards if guarded else ()))
    wanted = row.guarded if guarded else row.control
    why = f"{row.iso} {row.name} ({case}: policies of {list(row.guards) if guarded else 'no workload'})"
    args = probe_args(lab, row.target)
    result = lab.expect(row.source, args, wanted, why)
    print(f"{row.iso} {case}: {row.source} {' '.join(args)} -> {result}")
    if result["result"] == "open" and not row.target.startswith("tcp:api-"):
        # A pod target answers with its banner: the connection reached the probe server itself.
        assert result.get("banner") == BANNER, result
