"""Named points where the reliability tests make the operator fail (docs/reliability.md).

Off unless APWA_FAULT is set (the tests set it on the operator they start; nothing else should):

    APWA_FAULT=<point>:<n>[,<point>:<n>...]

The n-th time the operator passes <point> (counted per process):
* an exit point ends the process at once with os._exit(137), no cleanup and nothing flushed, as a
  SIGKILL or an OOM kill right after that write would;
* a wedge point makes the caller await forever, as a bug that no timeout covers would: what the
  liveness probe must catch.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections import Counter

log = logging.getLogger("apwa.faultpoints")


class Point(enum.StrEnum):
    # Exit points: right after each durable write of a reconcile step.
    JOB_CREATED = "job-created"  # a subtask's Job was created
    OUTCOMES_STORED = "outcomes-stored"  # finished subtasks' outcomes were written to the store
    STATUS_WRITTEN = "status-written"  # the workload's status was patched
    TTL_PATCHED = "ttl-patched"  # a finished Job got its ttlSecondsAfterFinished
    # Wedge points.
    WATCH_EVENT = "watch-event"  # a child watch received an event
    STEP = "step"  # a reconcile step started


EXIT_POINTS = frozenset({Point.JOB_CREATED, Point.OUTCOMES_STORED, Point.STATUS_WRITTEN, Point.TTL_PATCHED})


def parse(value: str) -> dict[Point, int]:
    """`job-created:3,step:1` -> {JOB_CREATED: 3, STEP: 1}; errors name the entry and the choices."""
    plan: dict[Point, int] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, _, n = entry.partition(":")
        try:
            plan[Point(name)] = int(n or "1")
        except ValueError:
            choices = ", ".join(p.value for p in Point)
            raise ValueError(f"APWA_FAULT entry {entry!r}: expected <point>:<n> with a point among {choices}") from None
    return plan


_PLAN = parse(os.environ.get("APWA_FAULT", ""))
_passed: Counter[Point] = Counter()


def passed(point: Point) -> bool:
    """Count one pass; exit at an exit point's n-th pass; True at a wedge point's n-th pass."""
    if not _PLAN or point not in _PLAN:
        return False
    _passed[point] += 1
    if _passed[point] != _PLAN[point]:
        return False
    if point in EXIT_POINTS:
        log.warning("fault point %s, pass %d: exiting (APWA_FAULT)", point, _PLAN[point])
        logging.shutdown()
        os._exit(137)
    log.warning("fault point %s, pass %d: wedging this task (APWA_FAULT)", point, _PLAN[point])
    return True


async def forever() -> None:
    await asyncio.Event().wait()
