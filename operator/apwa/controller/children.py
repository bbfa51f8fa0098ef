"""What the operator needs to know of a child Job or Pod, extracted from a watch event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apwa.results import message_budget


@dataclass
class JobState:
    name: str
    finished: bool = False
    succeeded: bool = False
    reason: str = ""
    message: str = ""
    suspended: bool = False
    finished_at: float | None = None  # epoch seconds, from the Job's condition
    uid: str = ""

    @classmethod
    def from_body(cls, job: dict[str, Any]) -> JobState:
        status = job.get("status") or {}
        state = cls(
            name=job["metadata"]["name"],
            suspended=bool((job.get("spec") or {}).get("suspend")),
            uid=job["metadata"].get("uid", ""),
        )
        for c in status.get("conditions") or []:
            if c.get("status") != "True":
                continue
            if c.get("type") in ("Complete", "Failed"):
                state.finished = True
                state.succeeded = c["type"] == "Complete"
                state.reason = c.get("reason") or c["type"]
                state.message = c.get("message") or ""
                state.finished_at = _epoch(c.get("lastTransitionTime"))
        return state


@dataclass
class PodResult:
    """The termination of a pod's first (main) container."""

    phase: str
    exit_code: int | None
    reason: str
    message: str
    budget: int | None = None  # bytes of a termination message the kubelet keeps in this pod

    @classmethod
    def from_body(cls, pod: dict[str, Any]) -> PodResult | None:
        status = pod.get("status") or {}
        phase = status.get("phase", "")
        if phase not in ("Succeeded", "Failed"):
            return None
        spec = pod.get("spec") or {}
        containers = spec.get("containers") or [{}]
        main = containers[0].get("name")
        budget = message_budget(spec)
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") == main:
                term = (cs.get("state") or {}).get("terminated") or {}
                return cls(phase, term.get("exitCode"), term.get("reason") or "", term.get("message") or "", budget)
        return cls(phase, None, status.get("reason") or "", status.get("message") or "", budget)


def _epoch(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
