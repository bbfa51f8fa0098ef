"""What the live commands (`apwa get | watch | describe | logs | retry`, cli_live.py) compute from a
workload as the API server returns it: rates, ETAs, table rows, the next retry's attempt and the exit
code of `apwa watch`. Pure: the commands fetch and print, these decide.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from apwa.api.vocabulary import FINISHED, Phase
from apwa.common.times import parse_iso
from apwa.rendering import LABEL_ATTEMPT
from apwa.status import is_finished

# The rate `apwa watch` shows is over the last RATE_WINDOW seconds: a fan-out speeds up and
# slows down (the window fills, stragglers), and an average since the start hides that.
RATE_WINDOW = 60.0


class WatchExit(IntEnum):
    """`apwa watch` exit codes: scripts and CI wait on them."""

    SUCCEEDED = 0
    FAILED = 1
    ERROR = 2  # could not watch: no kubeconfig, API error, not found, deleted before it finished
    TIMEOUT = 124  # --timeout passed first (as timeout(1) exits)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


@dataclass(frozen=True, slots=True)
class Counts:
    total: int = 0
    pending: int = 0
    active: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @classmethod
    def of(cls, workload: Mapping[str, Any]) -> Counts:
        c = (workload.get("status") or {}).get("counts") or {}
        return cls(**{k: int(c.get(k) or 0) for k in ("total", "pending", "active", "succeeded", "failed")})


def phase_of(workload: Mapping[str, Any]) -> str:
    return str((workload.get("status") or {}).get("phase") or Phase.PENDING)


def outcome(workload: Mapping[str, Any]) -> WatchExit | None:
    """The exit code a finished workload means; None while it is not finished, or while a retry
    asked for is not accepted yet (`apwa retry NAME && apwa watch NAME` waits for the retry)."""
    status = workload.get("status") or {}
    if not is_finished(status) or retry_pending(workload):
        return None
    return WatchExit.SUCCEEDED if status.get("phase") == Phase.SUCCEEDED else WatchExit.FAILED


def retry_pending(workload: Mapping[str, Any]) -> bool:
    """spec.retry asks for a retry the operator has not accepted yet (status.retry.attempt)."""
    asked = int(((workload.get("spec") or {}).get("retry") or {}).get("attempt") or 0)
    return asked > int(((workload.get("status") or {}).get("retry") or {}).get("attempt") or 0)


def eta(remaining: int, rate: float | None) -> float | None:
    """Seconds until `remaining` subtasks finish at `rate` per second; None when unknown."""
    if remaining <= 0:
        return 0.0
    if not rate or rate <= 0:
        return None
    return remaining / rate


def average_rate(workload: Mapping[str, Any], now: float) -> float | None:
    """Subtasks finished per second since the workload started (what one snapshot can tell)."""
    start = parse_iso((workload.get("status") or {}).get("startTime"))
    finished = Counts.of(workload).finished
    if start is None or now <= start or not finished:
        return None
    return finished / (now - start)


class RateMeter:
    """Subtasks finished per second over the last `window` seconds of observations."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, finished: int) -> None:
        if self.samples and finished < self.samples[-1][1]:
            self.samples.clear()  # a retry un-counted failures: the earlier samples don't compare
        self.samples.append((now, finished))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, f0), (t1, f1) = self.samples[0], self.samples[-1]
        return (f1 - f0) / (t1 - t0) if t1 > t0 else None


def duration(seconds: float | None) -> str:
    """Like kubectl's ages: 45s, 3m12s, 2h5m, 3d4h; '-' when unknown."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


GET_COLUMNS = ("NAME", "PHASE", "PROGRESS", "FAILED", "ACTIVE", "ETA", "AGE")


def get_row(workload: Mapping[str, Any], now: float) -> tuple[str, ...]:
    """One `apwa get` row: kubectl's columns for the resource, plus an ETA."""
    c = Counts.of(workload)
    meta = workload["metadata"]
    phase = phase_of(workload)
    if phase in FINISHED:
        left = "-"
    else:
        left = duration(eta(c.total - c.finished, average_rate(workload, now)))
    age = now - (parse_iso(meta.get("creationTimestamp")) or now)
    return (meta["name"], phase, f"{c.succeeded}/{c.total}", str(c.failed), str(c.active), left, duration(age))


def next_attempt(workload: Mapping[str, Any]) -> int | None:
    """The attempt `apwa retry` asks for: a request not accepted yet is asked again, and while an
    accepted retry still runs there is nothing to ask (None); so running the command twice is one
    retry. Otherwise one past the last retry."""
    status = workload.get("status") or {}
    observed = int((status.get("retry") or {}).get("attempt") or 0)
    if retry_pending(workload):
        return int(workload["spec"]["retry"]["attempt"])
    if observed and not is_finished(status):
        return None
    return observed + 1


def latest_pod(pods: list[Mapping[str, Any]], attempt: int | None = None) -> Mapping[str, Any] | None:
    """The pod whose logs `apwa logs` shows: of the given attempt (default: the latest one), the
    last created (backoffLimit retries make several pods in one attempt)."""

    def attempt_of(p: Mapping[str, Any]) -> int:
        return int((p["metadata"].get("labels") or {}).get(LABEL_ATTEMPT) or 0)

    if not pods:
        return None
    want = max(attempt_of(p) for p in pods) if attempt is None else attempt
    mine = [p for p in pods if attempt_of(p) == want]
    return max(mine, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]), default=None)
