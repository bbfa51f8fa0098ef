"""What /readyz and /healthz answer, and the metrics that say the same thing.

Readiness: "the operator can see the cluster now". Every watch reports whether it is connected
(its list succeeded and its stream is open); while any is not (the API server is down, or answers
errors), the operator is not ready and `apwa_api_reachable` is 0. Nothing is restarted for that:
the watches retry by themselves, forever, and the operator resumes when the API server is back.

Liveness: "the operator's loops are not wedged", the only condition a restart cures. A watch loop
gives a sign of life on every event, bookmark, list page and failed attempt, and each of its awaits
is bounded by its timeout, so a loop silent for longer than `dead_after` is stuck on something no
timeout covers; a reconcile step running longer than the step deadline is stuck too; so is a
workload loop that ended while its workload still exists. An unreachable API server is not a
liveness failure: a new process could not reach it either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from apwa import metrics

# A reconcile step awaits API requests, each retried for at most ~5 min (Kube.request: 9 attempts
# of at most 30 s plus backoffs); a step still running after this long is stuck.
STEP_DEADLINE_SECONDS = 900.0
# The base delay between a watch's attempts doubles up to this (controller/watch.py). Low, because
# it bounds how long after an outage the operator sees the cluster again; each attempt is a request
# that Kube.request already retried several times.
WATCH_BACKOFF_CAP = 8.0
# The longest pause between two attempts of a watch (the backoff's jitter doubles it at most).
WATCH_MAX_BACKOFF = 2 * WATCH_BACKOFF_CAP


@dataclass
class WatchVitals:
    name: str
    timeout: float  # every await of the watch loop is bounded by this
    connected: bool = False
    changed_at: float = 0.0
    last_sign: float = 0.0

    @property
    def dead_after(self) -> float:
        """The longest a live loop can be silent: one bounded await, one backoff, one more await."""
        return 2 * self.timeout + WATCH_MAX_BACKOFF


class Vitals:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.watches: dict[str, WatchVitals] = {}
        self.steps: dict[str, float] = {}  # workload -> when its running step started
        self.ended: dict[str, str] = {}  # workload -> why its loop ended although it still exists
        self.step_deadline = STEP_DEADLINE_SECONDS
        self.serving = False  # kopf runs (its startup handler ran, it has not stopped)
        self.standby = False  # a replica waiting for the leader election's lease: ready as it is

    # ---- reports from the watches ---------------------------------------------------------------
    def watch(self, name: str, timeout: float) -> None:
        now = self.clock()
        self.watches[name] = WatchVitals(name, timeout, changed_at=now, last_sign=now)
        self._gauges()

    def alive(self, name: str) -> None:
        self.watches[name].last_sign = self.clock()

    def connected(self, name: str, up: bool) -> None:
        w = self.watches[name]
        w.last_sign = now = self.clock()
        if w.connected != up:
            w.connected, w.changed_at = up, now
            self._gauges()

    def forget_watches(self) -> None:
        self.watches.clear()
        self._gauges()

    def current_since(self, kind: str) -> float | None:
        """Since when (epoch seconds) every watch of `kind` ("pods", "jobs") has been connected
        without a break: their view is complete since then. None while one is down."""
        mine = [w for w in self.watches.values() if w.name.rsplit("/", 1)[-1] == kind]
        if not mine or not all(w.connected for w in mine):
            return None
        return time.time() - (self.clock() - max(w.changed_at for w in mine))

    # ---- reports from the reconcile loops -------------------------------------------------------
    def step_started(self, key: str) -> None:
        self.steps[key] = self.clock()

    def step_ended(self, key: str) -> None:
        self.steps.pop(key, None)

    def loop_ended(self, key: str, why: str) -> None:
        self.ended[key] = why

    def loop_stopped(self, key: str) -> None:
        """The loop was stopped on purpose (its workload is gone or finished)."""
        self.steps.pop(key, None)
        self.ended.pop(key, None)

    # ---- the answers ----------------------------------------------------------------------------
    def not_ready(self) -> list[str]:
        if self.standby:
            return []
        now = self.clock()
        out = [] if self.serving else ["the operator is starting (or restarting after kopf stopped)"]
        if not self.watches:
            out.append("no watch started yet")
        out += [
            f"watch {w.name} disconnected for {now - w.changed_at:.0f}s"
            for w in self.watches.values()
            if not w.connected
        ]
        return out

    def not_live(self) -> list[str]:
        now = self.clock()
        out = [
            f"watch {w.name} silent for {now - w.last_sign:.0f}s (its loop is stuck; limit {w.dead_after:.0f}s)"
            for w in self.watches.values()
            if now - w.last_sign > w.dead_after
        ]
        out += [
            f"workload {key}: a reconcile step has run for {now - t:.0f}s (limit {self.step_deadline:.0f}s)"
            for key, t in self.steps.items()
            if now - t > self.step_deadline
        ]
        out += [f"workload {key}: its loop ended: {why}" for key, why in self.ended.items()]
        return out

    def _gauges(self) -> None:
        up = bool(self.watches) and all(w.connected for w in self.watches.values())
        metrics.API_REACHABLE.set(1 if up else 0)
        for w in self.watches.values():
            metrics.WATCH_CONNECTED.labels(watch=w.name).set(1 if w.connected else 0)


VITALS = Vitals()
