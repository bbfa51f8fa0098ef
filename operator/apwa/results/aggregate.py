"""Pure aggregation of subtask outcomes: counts, a capped failure list, results in index order."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Any

from apwa.results.usage import UsageTotals

FAILED_LIST_CAP = 20
MESSAGE_CAP = 512
SUMMARY_CAP_BYTES = 2048


def tail(message: str, cap: int = MESSAGE_CAP) -> str:
    """The end of a long message: a failure's log tail ends with the error that matters."""
    return message if len(message) <= cap else "..." + message[-(cap - 3) :]


@dataclass(frozen=True, slots=True)
class SubtaskOutcome:
    index: int
    succeeded: bool
    result: Any = None
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    job: str | None = None
    # A result kept in the object store: {"key", "size", "sha256"?}; `result` is then None.
    stored: dict[str, Any] | None = None
    failed_pods: int | None = None  # pods that failed and counted against backoffLimit
    usage: dict[str, Any] | None = None  # what its pods' agents spent (decode_usage), all attempts


def failure_entry(o: SubtaskOutcome) -> dict[str, Any]:
    """One failed subtask as status.failedSubtasks lists it, its message shortened."""
    entry: dict[str, Any] = {"index": o.index, "reason": o.reason or "Failed", "message": tail(o.message)}
    if o.job:
        entry["job"] = o.job
    if o.exit_code is not None:
        entry["exitCode"] = o.exit_code
    if o.failed_pods:
        entry["failedPods"] = o.failed_pods
    return entry


def result_entry(o: SubtaskOutcome) -> dict[str, Any]:
    return {"index": o.index, "stored": o.stored} if o.stored is not None else {"index": o.index, "result": o.result}


@dataclass
class Aggregate:
    """Everything known about finished subtasks. Recording the same index twice is a no-op, so a
    replayed event (watch restart, operator restart) never counts twice."""

    total: int
    outcomes: dict[int, SubtaskOutcome] = field(default_factory=dict)
    _failed_indices: list[int] = field(default_factory=list)
    usage: UsageTotals = field(default_factory=UsageTotals)

    def record(self, outcome: SubtaskOutcome) -> bool:
        if outcome.index in self.outcomes:
            return False
        self.outcomes[outcome.index] = outcome
        self.usage.add(outcome.usage)
        if not outcome.succeeded:
            bisect.insort(self._failed_indices, outcome.index)
        return True

    def forget(self, index: int) -> SubtaskOutcome | None:
        """Un-record a subtask (a retry runs it again); its outcome, if it had one."""
        outcome = self.outcomes.pop(index, None)
        if outcome is not None and not outcome.succeeded:
            self._failed_indices.pop(bisect.bisect_left(self._failed_indices, index))
        return outcome

    @property
    def failed_indices(self) -> list[int]:
        """The failed subtasks, by index (the list itself: don't change it)."""
        return self._failed_indices

    @property
    def succeeded(self) -> int:
        return len(self.outcomes) - len(self._failed_indices)

    @property
    def failed(self) -> int:
        return len(self._failed_indices)

    @property
    def finished(self) -> int:
        return len(self.outcomes)

    def failures(self, cap: int = FAILED_LIST_CAP) -> list[dict[str, Any]]:
        """The first `cap` failures by index, messages shortened: bounded whatever the scale."""
        return [failure_entry(self.outcomes[i]) for i in self._failed_indices[:cap]]

    def results(self) -> list[dict[str, Any]]:
        """Every succeeded subtask's result (or its stored object's reference), in index order."""
        return [result_entry(self.outcomes[i]) for i in sorted(self.outcomes) if self.outcomes[i].succeeded]

    def reduce_input(self) -> dict[str, Any]:
        """What a reduce step reads: results in index order plus the indices that failed."""
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": list(self._failed_indices),
            "results": self.results(),
        }

    def summary(self, cap_bytes: int = SUMMARY_CAP_BYTES) -> Any:
        """A bounded stand-in for the result when there is no reduce step: all results if they fit,
        otherwise the first ones that fit and a count of the rest."""
        results = self.results()
        encoded = json.dumps(results, separators=(",", ":"))
        if len(encoded) <= cap_bytes:
            return results
        kept: list[dict[str, Any]] = []
        size = 2
        for r in results:
            size += len(json.dumps(r, separators=(",", ":"))) + 1
            if size > cap_bytes:
                break
            kept.append(r)
        return {"first": kept, "omitted": len(results) - len(kept), "note": "all results: see status.resultsRef"}
