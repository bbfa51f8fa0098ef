"""Pacing of retries: the one jittered exponential backoff and the one Retry-After reader.

Used by the Kubernetes client, the child watches and the HTTP clients (planners, later the
agent worker), so every retry in the product waits the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class Backoff:
    """Exponential delays with jitter: many workloads (or watches) failing together must not
    retry in step. `jitter` is the range the base delay is multiplied by."""

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        jitter: tuple[float, float] = (1.0, 2.0),
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.first, self.cap, self.jitter, self._rng = first, cap, jitter, rng
        self._base = first

    def next(self) -> float:
        """The next wait; the base doubles up to `cap`."""
        low, high = self.jitter
        wait = self._base * (low + (high - low) * self._rng())
        self._base = min(self._base * 2, self.cap)
        return wait

    def reset(self) -> None:
        self._base = self.first


def retry_after(value: str | None, *, cap: float, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), within [0, cap].

    A server asking for more than `cap` gets `cap`: the caller then fails or stalls with its own
    backoff rather than blocking for an unbounded time. None when absent or unreadable.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), cap)
