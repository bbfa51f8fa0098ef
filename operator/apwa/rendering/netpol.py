"""One NetworkPolicy per workload: no ingress at all, egress only as spec.isolation allows."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from apwa.api.models import Isolation, StoreSpec
from apwa.rendering.jobs import LABEL_WORKLOAD, Owner, metadata
from apwa.rendering.names import child_name, label_value

_DNS = {
    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def render_network_policy(owner: Owner, isolation: Isolation, store: StoreSpec | None = None) -> dict[str, Any]:
    egress: list[dict[str, Any]] = []
    if isolation.egress in ("DNS", "Custom") or _needs_dns(store):
        egress.append(_DNS)
    for rule in isolation.egress_rules or [] if isolation.egress == "Custom" else []:
        block: dict[str, Any] = {"cidr": rule.cidr}
        if rule.except_:
            block["except"] = list(rule.except_)
        entry: dict[str, Any] = {"to": [{"ipBlock": block}]}
        if rule.ports:
            entry["ports"] = [{"protocol": p.protocol, "port": p.port} for p in rule.ports]
        egress.append(entry)
    egress += _store_rules(store)
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


def _needs_dns(store: StoreSpec | None) -> bool:
    """A store named by a host name must be resolved by the pods' store sidecar."""
    if store is None:
        return False
    host = urlsplit(store.s3.endpoint or "https://s3.amazonaws.com").hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _store_rules(store: StoreSpec | None) -> list[dict[str, Any]]:
    """The way to the store (spec.store.egress): pods by selector, or an address block."""
    rules: list[dict[str, Any]] = []
    for rule in (store.egress or []) if store else []:
        if rule.cidr is not None:
            peer: dict[str, Any] = {"ipBlock": {"cidr": rule.cidr}}
        else:
            peer = {"podSelector": rule.pod_selector or {}}
            if rule.namespace_selector is not None:
                peer["namespaceSelector"] = rule.namespace_selector
        entry: dict[str, Any] = {"to": [peer]}
        if rule.ports:
            entry["ports"] = [{"protocol": p.protocol, "port": p.port} for p in rule.ports]
        rules.append(entry)
    return rules
