"""The LLM reduce: `apwa-agent` in a reduce pod merges every subtask's result with the model.

    apwa-agent        # in the reduce pod: $APWA_AGENT_REDUCE set, results at $APWA_RESULTS_PATH

Results that fit one prompt (results.reduce.agent.maxInputChars, fanIn) are merged by one request.
More are merged in rounds: consecutive groups of at most fanIn results (and maxInputChars) are
merged, then groups of those merges, until one answer is left: about log_fanIn(N) rounds and
N/(fanIn-1) requests in all. Every merge, partial or final, answers the same prompt and schema,
so a partial merge is a valid input of the next round. Usage is summed over every request.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from apwa import worker
from apwa.agent import AgentClient, AgentError, Answer, Files, ask, messages, report
from apwa.api.models import ENV_AGENT_REDUCE, AgentSpec, ReduceAgent

FIELD = "spec.results.reduce.agent"
CONCURRENT_MERGES = 4  # requests of one round in flight at once: a model server is shared


def declaration(env: Mapping[str, str]) -> ReduceAgent:
    try:
        return ReduceAgent.model_validate(json.loads(env[ENV_AGENT_REDUCE]))
    except (ValueError, ValidationError) as e:
        raise AgentError(f"${ENV_AGENT_REDUCE} is not a valid {FIELD}: {e}", final=True) from None


def merger(spec: AgentSpec, reduce: ReduceAgent) -> AgentSpec:
    """spec.agent as one merge request sees it: the reduce's prompts, schema and output limit."""
    return spec.model_copy(
        update={
            "system_prompt": reduce.system_prompt,
            "prompt": reduce.prompt,
            "files": None,
            "output_schema": reduce.output_schema,
            "max_tokens": reduce.max_tokens or spec.max_tokens,
            "max_turns": None,
        }
    )


def groups(lines: list[str], fan_in: int, max_chars: int) -> list[list[str]]:
    """Consecutive groups of at most `fan_in` lines and `max_chars` characters (index order kept)."""
    out: list[list[str]] = []
    size = 0
    for line in lines:
        if len(line) > max_chars:
            raise AgentError(
                f"{FIELD}.maxInputChars: one input of the merge is {len(line)} characters, more than "
                f"maxInputChars ({max_chars}); raise it (within the model's context) or make the subtasks' "
                "answers (or the merge's, outputSchema) shorter",
                final=True,
            )
        if not out or len(out[-1]) >= fan_in or size + len(line) > max_chars:
            out.append([])
            size = 0
        out[-1].append(line)
        size += len(line) + 1
    return out


def result_lines(results: Iterable[tuple[int, Any]]) -> list[str]:
    return [json.dumps({"index": i, "result": r}, separators=(",", ":"), sort_keys=True) for i, r in results]


async def reduce(
    spec: AgentSpec,
    reduce_spec: ReduceAgent,
    lines: list[str],
    context: dict[str, Any],
    *,
    client: AgentClient,
) -> Any:
    """Merge `lines` (one JSON document each) into one answer, in as many rounds as it takes."""
    if not lines:
        raise AgentError(f"{FIELD}: no subtask succeeded, there is nothing to merge")
    merge = merger(spec, reduce_spec)
    start = messages(merge, context, Files([]))
    limit = asyncio.Semaphore(CONCURRENT_MERGES)

    async def one(group: list[str]) -> Any:
        convo = [*start[:-1], {**start[-1], "content": start[-1]["content"] + "\n\n" + "\n".join(group)}]
        async with limit:
            return await ask(client, merge, convo, Files([]))

    while True:
        parts = groups(lines, reduce_spec.fan_in, reduce_spec.max_input_chars)
        if len(parts) == 1:
            return await one(parts[0])
        if len(parts) == len(lines):
            raise AgentError(
                f"{FIELD}: no two inputs fit one prompt of maxInputChars ({reduce_spec.max_input_chars}); raise "
                "it, or make the answers shorter",
                final=True,
            )
        merged = await asyncio.gather(*(one(g) for g in parts))
        lines = [json.dumps(m, separators=(",", ":"), sort_keys=True) for m in merged]


async def answer(
    spec: AgentSpec,
    reduce_spec: ReduceAgent,
    results: Iterable[tuple[int, Any]],
    context: dict[str, Any],
    *,
    key: str | None = None,
    key_source: str | None = None,
    backoff: float = 0.5,
) -> Answer:
    """The merged answer and what every request of it spent (AgentError.usage on failure)."""
    client = AgentClient(api_key=key, key_source=key_source, backoff=backoff)
    if reduce_spec.output_schema is None:
        client.format = "none"
    try:
        value = await reduce(spec, reduce_spec, result_lines(results), context, client=client)
    except AgentError as e:
        e.usage = client.usage()
        raise
    return Answer(value, client.usage())


def run(env: Mapping[str, str] | None = None, *, backoff: float = 0.5) -> None:
    """The reduce pod's command: every result the reduce received, merged and reported."""
    env = os.environ if env is None else env

    def merged(spec: AgentSpec, key: str | None, source: str | None) -> Answer:
        reduce_spec = declaration(env)
        received = worker.results()
        results = ((r["index"], r["result"]) for r in received["results"])
        context = {"count": received["total"], "workload": env.get("APWA_WORKLOAD", "")}
        return asyncio.run(answer(spec, reduce_spec, results, context, key=key, key_source=source, backoff=backoff))

    report(env, merged)
