"""The isolation lab: subtask pods rendered by apwa itself, a bystander pod, and probes run in them.

Subtask Jobs and NetworkPolicies come from apwa's own rendering functions (``render_job``,
``render_network_policy``: the exact objects the operator creates), applied with kubectl. Every
pod runs ``isolation_probe.py serve`` on the real node; probes run inside a pod with ``kubectl
exec`` and target only this cluster's pods and Services and the node's own address.

A test switches workloads' NetworkPolicies on or off (``Lab.isolate``) and then waits, with a
deadline, for the probe outcome it expects: the engine applies a policy change within seconds,
so a wait replaces any sleep.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apwa.api.models import ParallelWorkloadSpec
from apwa.planning import plan
from apwa.rendering import Owner, render_job, render_network_policy, without_result_finalizer
from helpers import WaitTimeout, wait_for

HERE = Path(__file__).resolve().parent
PROBE_SOURCE = (HERE / "isolation_probe.py").read_text()
PROBE_PORT = 8080
OTHER_PORT = 8081
BANNER = "apwa-isolation-probe"
CLUSTER_NAME = "kubernetes.default.svc.cluster.local"
OPEN = frozenset({"open"})
BLOCKED = frozenset({"refused", "timeout", "unreachable"})
RESOLVED = frozenset({"resolved"})
NOT_RESOLVED = frozenset({"refused", "timeout", "error", "no-answer"})
POD_READY_S = 180
POLICY_CHANGE_S = 45
PSA_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


class KubectlError(RuntimeError):
    pass


def kubectl(*args: str, stdin: str | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise KubectlError(f"kubectl {' '.join(args[:4])}... failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def apply(doc: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps(doc))


@dataclass(frozen=True)
class Placement:
    """Where the lab's pods run: the real node (its label and taint), and the image with python3."""

    image: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]

    def pod_spec(self, name: str, security: dict[str, Any] | None = None) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": name,
            "image": self.image,
            # Present already on the test node (imported, never pulled); pulled on another cluster.
            "imagePullPolicy": "IfNotPresent",
            "command": ["python3", "-c", PROBE_SOURCE, "serve"],
            "ports": [{"containerPort": PROBE_PORT}, {"containerPort": OTHER_PORT}],
        }
        if security is not None:
            container["securityContext"] = security
        spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 1}
        if self.node_selector:
            spec["nodeSelector"] = self.node_selector
        if self.tolerations:
            spec["tolerations"] = self.tolerations
        return spec


@dataclass
class Workload:
    name: str
    namespace: str
    spec: ParallelWorkloadSpec
    policy: dict[str, Any]
    pods: list[str] = field(default_factory=list)


@dataclass
class ClusterFacts:
    api_service: tuple[str, int]  # the kubernetes Service (ClusterIP, port)
    api_endpoint: tuple[str, int]  # where that Service sends packets: the API server itself


class Lab:
    def __init__(self, placement: Placement, namespace: str, loose_namespace: str) -> None:
        self.placement = placement
        self.namespace = namespace  # Pod Security restricted is enforced here
        self.loose_namespace = loose_namespace  # no enforcement: for the unrestricted control pod
        self.workloads: dict[str, Workload] = {}
        self.operated: dict[str, Workload] = {}  # ParallelWorkloads run by the operator (their own policies)
        self.bystander = ""
        self.ips: dict[str, str] = {}
        self.facts = cluster_facts()

    # ---- building ---------------------------------------------------------------------------

    def add_workload(self, name: str, count: int, isolation: dict[str, Any], **options: Any) -> Workload:
        """Render a workload's Jobs and NetworkPolicy with apwa; create the Jobs (not the policy)."""
        namespace = options.pop("namespace", self.namespace)
        pod_spec = self.placement.pod_spec("probe", options.pop("security", None))
        spec = ParallelWorkloadSpec.model_validate(
            {
                "decomposition": {"range": {"end": count}},
                "templates": {"default": {"podTemplate": {"spec": pod_spec}, "activeDeadlineSeconds": 3600}},
                "isolation": isolation,
            }
        )
        owner = Owner(name, namespace, None, {"apwa.dev/test": "isolation"})
        subtasks = plan(spec)
        for s in subtasks:
            # No operator runs in this tier to release the pods' result finalizer: without this the
            # pods (and the namespace deleted at the end) would stay Terminating for good.
            apply(without_result_finalizer(render_job(owner, spec, s, len(subtasks))))
        w = Workload(name, namespace, spec, render_network_policy(owner, spec.isolation_or_default))
        self.workloads[name] = w
        return w

    def add_bystander(self) -> None:
        """A plain pod outside APWA, in the same namespace: no apwa labels, no policy."""
        restricted = {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        self.bystander = "bystander"
        apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": self.bystander, "namespace": self.namespace, "labels": {"app": "bystander"}},
                "spec": self.placement.pod_spec("probe", restricted),
            }
        )

    def wait_running_bystander(self) -> None:
        """The bystander first: the Custom workload's egress rule names its address."""
        self.ips[self.bystander] = wait_for(
            lambda: self.pod_ip(self.namespace, self.bystander), POD_READY_S, "the bystander pod to run with an IP"
        )

    def wait_running(self) -> None:
        """Every subtask pod Running with an IP."""
        for w in self.workloads.values():
            for index in range(len(plan(w.spec))):
                pod = wait_for(
                    lambda w=w, index=index: self._job_pod(w, index),
                    POD_READY_S,
                    f"the pod of subtask {w.name}-{index} in {w.namespace} to run with an IP",
                )
                w.pods.append(pod)
                self.ips[pod] = self.pod_ip(w.namespace, pod) or ""

    def _job_pod(self, w: Workload, index: int) -> str | None:
        return self.running_pod(f"{w.name}-{index}", w.namespace)

    def running_pod(self, job: str, namespace: str | None = None) -> str | None:
        """The Running pod (with an IP) of a Job, if there is one."""
        out = kubectl("get", "pods", "-n", namespace or self.namespace, "-l", f"job-name={job}", "-o", "json")
        for pod in json.loads(out)["items"]:
            if pod["status"].get("phase") == "Running" and pod["status"].get("podIP"):
                return str(pod["metadata"]["name"])
        return None

    @staticmethod
    def pod_ip(namespace: str, pod: str) -> str | None:
        out = json.loads(kubectl("get", "pod", "-n", namespace, pod, "-o", "json"))
        status = out["status"]
        return status.get("podIP") if status.get("phase") == "Running" else None

    # ---- policies ---------------------------------------------------------------------------

    def isolate(self, *names: str) -> None:
        """Exactly these workloads' NetworkPolicies exist afterwards (the rest are deleted)."""
        for w in self.workloads.values():
            if w.name in names:
                apply(w.policy)
            else:
                name = w.policy["metadata"]["name"]
                kubectl("delete", "networkpolicy", "-n", w.namespace, name, "--ignore-not-found")

    # ---- probes -----------------------------------------------------------------------------

    def pod_of(self, ref: str) -> tuple[str, str]:
        """'bystander' or '<workload>/<index>' -> (namespace, pod name)."""
        if ref == "bystander":
            return self.namespace, self.bystander
        name, _, index = ref.partition("/")
        w = self.workloads.get(name) or self.operated[name]
        return w.namespace, w.pods[int(index)]

    def address(self, target: str) -> tuple[str, int]:
        """'api-service', 'api-endpoint', or '<pod ref>:<port>'."""
        if target == "api-service":
            return self.facts.api_service
        if target == "api-endpoint":
            return self.facts.api_endpoint
        ref, _, port = target.rpartition(":")
        return self.ips[self.pod_of(ref)[1]], int(port)

    def probe(self, source: str, *args: str) -> dict[str, Any]:
        namespace, pod = self.pod_of(source)
        out = kubectl("exec", "-n", namespace, pod, "-c", "probe", "--", "python3", "-c", PROBE_SOURCE, *args)
        return dict(json.loads(out.strip().splitlines()[-1]))

    def expect(self, source: str, args: tuple[str, ...], wanted: frozenset[str], why: str) -> dict[str, Any]:
        """Probe until the result is one of `wanted` (policy changes take a few seconds)."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            last.clear()
            last.update(self.probe(source, *args))
            return dict(last) if last.get("result") in wanted else None

        try:
            return wait_for(check, POLICY_CHANGE_S, f"{why}: probe {' '.join(args)} from {source} -> {sorted(wanted)}")
        except WaitTimeout as e:
            raise AssertionError(f"{e}; last probe result: {last}") from None


def cluster_facts() -> ClusterFacts:
    svc = json.loads(kubectl("get", "service", "-n", "default", "kubernetes", "-o", "json"))
    port = next(p["port"] for p in svc["spec"]["ports"] if p.get("name") == "https")
    slices = json.loads(
        kubectl("get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes", "-o", "json")
    )
    s = slices["items"][0]
    return ClusterFacts(
        api_service=(svc["spec"]["clusterIP"], int(port)),
        api_endpoint=(s["endpoints"][0]["addresses"][0], int(s["ports"][0]["port"])),
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
