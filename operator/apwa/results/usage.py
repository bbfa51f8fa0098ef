"""What agents spent, summed over subtasks: the `usage` of result envelopes (docs/results.md),
added up once per recorded subtask, so the sum is exact whatever the replays and restarts.

Pure: the operator and the local runner keep one `UsageTotals` beside their outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A subtask's usage as decode_usage returns it: the counts and latency_seconds.
Spent = Mapping[str, Any]


@dataclass(slots=True)
class UsageTotals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: int = 0
    latency_seconds: float = 0.0
    reports: int = 0  # envelopes that carried a usage: subtasks, plus the reduce when it is an agent

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, spent: Spent | None) -> None:
        if spent is None:
            return
        self.prompt_tokens += int(spent.get("prompt_tokens", 0))
        self.completion_tokens += int(spent.get("completion_tokens", 0))
        self.requests += int(spent.get("requests", 0))
        self.retries += int(spent.get("retries", 0))
        self.latency_seconds += float(spent.get("latency_seconds", 0.0))
        self.reports += 1

    def plus(self, *others: Spent | None) -> UsageTotals:
        """A copy with `others` added: the recorded totals stay the executor's to change."""
        out = UsageTotals(
            self.prompt_tokens,
            self.completion_tokens,
            self.requests,
            self.retries,
            self.latency_seconds,
            self.reports,
        )
        for spent in others:
            out.add(spent)
        return out

    def cost(self, price: Any) -> float:
        """Estimated cost with `price` (an AgentPrice: per 1,000 prompt and completion tokens)."""
        return (self.prompt_tokens * price.prompt + self.completion_tokens * price.completion) / 1000


def merged(spent: Iterable[Spent]) -> dict[str, Any] | None:
    """Several pods' usage (a subtask retried inside its Job) as one subtask's, or None for none."""
    out: dict[str, Any] = {}
    for s in spent:
        for key, value in s.items():
            out[key] = out.get(key, 0) + value
    return out or None


def usage_status(totals: UsageTotals, price: Any = None) -> dict[str, Any]:
    """status.usage: fixed fields, whatever the number of subtasks."""
    out: dict[str, Any] = {
        "promptTokens": totals.prompt_tokens,
        "completionTokens": totals.completion_tokens,
        "totalTokens": totals.total_tokens,
        "requests": totals.requests,
        "retries": totals.retries,
        "modelSeconds": f"{totals.latency_seconds:.3f}",
        "reports": totals.reports,
    }
    if price is not None:
        # A string: a float in the status would round-trip as 0.30000000000000004.
        out["estimatedCost"] = f"{totals.cost(price):.4f} {price.currency}"
    return out
