"""What a model's answer looks like once its wrapping is removed, and how an unusable one is
reported. Shared by the planner (apwa.planning.contract) and the agent worker (apwa.agent): both
send an unusable answer back to the model with the reason, a bounded number of times."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


class Invalid(Exception):
    """An answer that arrived but can't be used; the message is fed back to the model."""

    def __init__(self, message: str, *, too_many: bool = False) -> None:
        super().__init__(message)
        self.too_many = too_many


def unwrap(content: str) -> str:
    """The answer without a reasoning model's <think> block or a Markdown code fence."""
    text = _THINK.sub("", content).strip()
    fenced = _FENCE.match(text)
    return fenced.group(1).strip() if fenced else text


def parse_json(content: str, finish_reason: str | None, *, cut_hint: str) -> Any:
    """The answer as JSON; Invalid with the parser's position otherwise. `cut_hint` says what to
    do when the server stopped at its output limit (finish_reason "length")."""
    text = unwrap(content)
    if not text:
        raise Invalid("the answer was empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        cut = f" (it was cut off at the output limit: {cut_hint})" if finish_reason == "length" else ""
        raise Invalid(f"it is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}{cut}") from None
