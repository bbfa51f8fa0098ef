"""One NetworkPolicy per workload: no ingress at all, egress only as spec.isolation allows."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from apwa.api.models import AgentSpec, EgressPeer, Isolation, StoreSpec
from apwa.rendering.jobs import LABEL_WORKLOAD, Owner, metadata
from apwa.rendering.names import child_name, label_value

_DNS = {
    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def render_network_policy(
    owner: Owner, isolation: Isolation, store: StoreSpec | None = None, agent: AgentSpec | None = None
) -> dict[str, Any]:
    egress: list[dict[str, Any]] = []
    dns = _by_name(store.s3.endpoint or "https://s3.amazonaws.com" if store else None) or _by_name(
        agent.url if agent else None
    )
    if isolation.egress in ("DNS", "Custom") or dns:
        egress.append(_DNS)
    for rule in isolation.egress_rules or [] if isolation.egress == "Custom" else []:
        block: dict[str, Any] = {"cidr": rule.cidr}
        if rule.except_:
            block["except"] = list(rule.except_)
        entry: dict[str, Any] = {"to": [{"ipBlock": block}]}
        if rule.ports:
            entry["ports"] = [{"protocol": p.protocol, "port": p.port} for p in rule.ports]
        egress.append(entry)
    egress += _peer_rules(store.egress or [] if store else [])
    egress += _agent_rules(agent)
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


def _by_name(url: str | None) -> bool:
    """A server named by a host name: the pods must resolve it (cluster DNS)."""
    if url is None:
        return False
    return _ip_of(url) is None


def _ip_of(url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        return None


def _peer_rules(peers: list[EgressPeer]) -> list[dict[str, Any]]:
    """The way to a server (spec.store.egress, spec.agent.egress): pods by selector, or an address block."""
    rules: list[dict[str, Any]] = []
    for rule in peers:
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


def _agent_rules(agent: AgentSpec | None) -> list[dict[str, Any]]:
    """The way to the model: spec.agent.egress, or the url's own address and port when it is one.
    A url with a host name gets nothing here: NetworkPolicy can't name hosts (docs/agents.md)."""
    if agent is None:
        return []
    if agent.egress:
        return _peer_rules(agent.egress)
    ip = _ip_of(agent.url)
    if ip is None:
        return []
    parts = urlsplit(agent.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return [{"to": [{"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}], "ports": [{"protocol": "TCP", "port": port}]}]
