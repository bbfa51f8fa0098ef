"""One NetworkPolicy per workload: no ingress at all, egress only as spec.isolation allows."""

from __future__ import annotations

from typing import Any

from apwa.api.models import Isolation
from apwa.rendering.jobs import LABEL_WORKLOAD, Owner, metadata
from apwa.rendering.names import child_name, label_value

_DNS = {
    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def render_network_policy(owner: Owner, isolation: Isolation) -> dict[str, Any]:
    egress: list[dict[str, Any]] = []
    if isolation.egress in ("DNS", "Custom"):
        egress.append(_DNS)
    for rule in isolation.egress_rules or [] if isolation.egress == "Custom" else []:
        block: dict[str, Any] = {"cidr": rule.cidr}
        if rule.except_:
            block["except"] = list(rule.except_)
        entry: dict[str, Any] = {"to": [{"ipBlock": block}]}
        if rule.ports:
            entry["ports"] = [{"protocol": p.protocol, "port": p.port} for p in rule.ports]
        egress.append(entry)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, child_name(owner.name, "isolation"), {}),
        "spec": {
            # Every pod of this workload, and nothing else: subtasks never talk to each other.
            "podSelector": {"matchLabels": {LABEL_WORKLOAD: label_value(owner.name)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }
