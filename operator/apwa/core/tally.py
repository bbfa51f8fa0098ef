"""The recorded outcomes plus the ones this step records, without copying the record.

A step's decisions (failure budget, phase, counts) must count what it is about to record, but
the record (an `Aggregate` of up to 100,000 outcomes) belongs to the executor and is only
changed when the executor stores the new outcomes. This is the read-only sum of both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apwa.results import Aggregate, SubtaskOutcome
from apwa.results.aggregate import FAILED_LIST_CAP, failure_entry


class Tally:
    def __init__(self, recorded: Aggregate, new: Sequence[SubtaskOutcome] = ()) -> None:
        self.recorded = recorded
        self.new = {o.index: o for o in new if o.index not in recorded.outcomes}
        new_failed = sum(1 for o in self.new.values() if not o.succeeded)
        self.failed = recorded.failed + new_failed
        self.succeeded = recorded.succeeded + len(self.new) - new_failed
        self.finished = recorded.finished + len(self.new)
        self.usage = recorded.usage.plus(*(o.usage for o in self.new.values()))

    def __contains__(self, index: object) -> bool:
        return index in self.recorded.outcomes or index in self.new

    def failures(self, cap: int = FAILED_LIST_CAP) -> list[dict[str, Any]]:
        """The first `cap` failures by index, as `Aggregate.failures` lists them."""
        fresh = [failure_entry(o) for o in self.new.values() if not o.succeeded]
        if not fresh:
            return self.recorded.failures(cap)
        return sorted(self.recorded.failures(cap) + fresh, key=lambda e: e["index"])[:cap]

    def merged(self) -> Aggregate:
        """Everything as one Aggregate (O(n): only for the final summary)."""
        out = Aggregate(total=self.recorded.total)
        for o in self.recorded.outcomes.values():
            out.record(o)
        for o in self.new.values():
            out.record(o)
        return out
