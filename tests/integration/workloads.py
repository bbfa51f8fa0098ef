"""Building and observing ParallelWorkloads in the integration tests."""

from __future__ import annotations

import json
from typing import Any

from apwa.controller.store import read_payload
from helpers import wait_for
from kubernetes import client

GROUP, VERSION, PLURAL = "apwa.dev", "v1alpha1", "parallelworkloads"
TIMEOUT = 120.0


def pod_template(env: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod finished by kwok: env KWOK_* choose delay, outcome and termination message."""
    return {
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/apwa/worker:0",  # never pulled: kwok runs nothing
                    "command": ["worker"],
                    "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                }
            ]
        }
    }


def workload(
    name: str, decomposition: dict[str, Any], env: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    templates = spec.pop("templates", None) or {"default": {"podTemplate": pod_template(env)}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ParallelWorkload",
        "metadata": {"name": name},
        "spec": {"decomposition": decomposition, "templates": templates, **spec},
    }


def all_succeeded(n: int) -> dict[str, int]:
    """status.counts of a workload whose n subtasks all succeeded."""
    return {"total": n, "pending": 0, "active": 0, "succeeded": n, "failed": 0, "awaitingAdmission": 0}


class Workloads:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.co = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.ns = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.co.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.co.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.co.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def delete(self, name: str) -> None:
        self.co.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def condition(self, name: str, ctype: str) -> dict[str, Any] | None:
        status = self.get(name).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == ctype), None)

    def wait_condition(self, name: str, ctype: str, timeout: float = TIMEOUT, status: str = "True") -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            c = self.condition(name, ctype)
            return self.get(name) if c and c["status"] == status else None

        return wait_for(check, timeout, f"{self.ns}/{name} condition {ctype}={status} (now: {self.describe(name)})")

    def wait_phase(self, name: str, phase: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return wait_for(
            lambda: (w := self.get(name)).get("status", {}).get("phase") == phase and w,
            timeout,
            f"{self.ns}/{name} phase {phase} (now: {self.describe(name)})",
        )

    def describe(self, name: str) -> str:
        try:
            status = self.get(name).get("status") or {}
        except client.ApiException as e:
            return f"unreadable: {e.status}"
        return json.dumps({k: status.get(k) for k in ("phase", "message", "counts")})

    def jobs(self, name: str) -> list[client.V1Job]:
        return self.batch.list_namespaced_job(self.ns, label_selector=f"apwa.dev/workload={name}").items

    def results(self, name: str) -> dict[int, dict[str, Any]]:
        """Every stored outcome, read back from the workload's result ConfigMaps."""
        out: dict[int, dict[str, Any]] = {}
        selector = f"apwa.dev/workload={name},apwa.dev/role=results"
        for cm in self.core.list_namespaced_config_map(self.ns, label_selector=selector).items:
            raw = client.ApiClient().sanitize_for_serialization(cm)
            for i, entry in json.loads(read_payload(raw)).get("outcomes", {}).items():
                out[int(i)] = entry
        return out
