"""The built-in LLM agent: one subtask, one answer from an OpenAI-compatible model.

    apwa-agent                      # in a subtask pod: reads $APWA_AGENT, reports through apwa.worker
                                    # (in an LLM reduce's pod, apwa.agent_reduce: see apwa.agent_main)

The operator renders spec.agent into every subtask pod as $APWA_AGENT (JSON, no secret) and the
API key as $APWA_AGENT_API_KEY (from the Secret, by secretKeyRef); `apwa run --local` passes the
same declaration, and the key from this machine's environment. The agent fills the prompt from
the subtask's item, asks the model through the shared ChatClient (retries, Retry-After, the
deadline, usage counting), checks a structured answer against spec.agent.outputSchema with
bounded repair rounds, and emits the answer with a `usage` object in the result envelope.

Python API: `answer(spec, context, ...)` returns an `Answer` (value, usage) or raises AgentError;
`run()` is the whole command. docs/agents.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from apwa import worker
from apwa.api.models import ENV_AGENT, ENV_AGENT_API_KEY, AgentSpec
from apwa.clients.http import ClientError, Limits, display_url
from apwa.clients.openai import ChatClient, Usage
from apwa.common.answers import Invalid, parse_json
from apwa.common.schema import errors as schema_errors
from apwa.rendering.placeholders import PlaceholderError, substitute
from apwa.results.protocol import ResultTooLarge

log = logging.getLogger("apwa.agent")

FIELD = "spec.agent"
MAX_FILE_BYTES = 1024 * 1024  # one file handed to the model; more is refused, never cut
REPAIR_PROMPT = """\
Your answer could not be used: {error}
Answer again with only the corrected JSON value that matches the schema: no prose, no code fences."""
SCHEMA_RULE = "\n\nAnswer with only a JSON value that matches this JSON Schema:\n{schema}"
READ_FILE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a UTF-8 text file of this task: a path relative to the working directory, "
        "or under the task's input directory.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
}


class AgentError(Exception):
    """The agent could not answer. `final`: retrying the subtask cannot help (its declaration or
    its input is wrong), so it fails at once."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.final = final
        self.usage: Usage | None = None  # what was spent before failing: it counts all the same


@dataclass(frozen=True, slots=True)
class Answer:
    value: Any
    usage: Usage


class Files:
    """The only files the agent may read: under the working directory (in the worker image, the
    tree baked into it) or the subtask's input directory. Paths are resolved, symbolic links
    included, before the check, so neither '..' nor a link leads out."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [r.resolve() for r in roots]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Files:
        roots = [Path.cwd()]
        if env.get("APWA_INPUT_DIR"):
            roots.append(Path(env["APWA_INPUT_DIR"]))
        return cls(roots)

    def read(self, name: str) -> str:
        path = Path(name)
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        for candidate in candidates:
            real = candidate.resolve()
            if not any(real.is_relative_to(root) for root in self.roots):
                raise PermissionError(f"{name}: outside the files the agent may read ({self._where()})")
            if real.is_file():
                size = real.stat().st_size
                if size > MAX_FILE_BYTES:
                    raise PermissionError(f"{name}: {size} bytes, more than the {MAX_FILE_BYTES} an agent may read")
                return real.read_text(errors="replace")
        raise FileNotFoundError(f"{name}: no such file under {self._where()}")

    def _where(self) -> str:
        return ", ".join(str(r) for r in self.roots)


class AgentClient(ChatClient):
    kind = "OpenAI-compatible"
    noun = "model server"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(field=FIELD, **kwargs)
        self.task = "answer"

    def status_hint(self, code: int) -> str:
        if code in (400, 422):
            return f": check {FIELD}.model, and {FIELD}.maxTokens against the model's context length"
        return ""

    def fail_status(self, resp: httpx.Response, url: str) -> ClientError:
        e = super().fail_status(resp, url)
        # A 4xx answer (never 408 or 429: those were retried) says the same to the same request.
        return _Refused(e.field, e.message) if 400 <= resp.status_code < 500 else e


class _Refused(ClientError):
    """The server refused the request itself: asking again in a new pod cannot help."""


def declaration(env: Mapping[str, str]) -> AgentSpec:
    raw = env.get(ENV_AGENT)
    if not raw:
        raise AgentError(f"${ENV_AGENT} is not set: run apwa-agent in a workload with spec.agent", final=True)
    try:
        return AgentSpec.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as e:
        raise AgentError(f"${ENV_AGENT} is not a valid spec.agent: {e}", final=True) from None


def api_key(spec: AgentSpec, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(key, where it came from for messages); AgentError when the declared Secret didn't arrive."""
    ref = spec.api_key_secret_ref
    if ref is None:
        return None, None
    key = env.get(ENV_AGENT_API_KEY, "").strip()
    if not key:
        raise AgentError(
            f"{FIELD}.apiKeySecretRef: the key of Secret {ref.name!r} (key {ref.key!r}) did not arrive as "
            f"${ENV_AGENT_API_KEY}; on a cluster check that the Secret and key exist, locally export "
            f"{ENV_AGENT_API_KEY}",
            final=True,
        )
    return key, f"Secret {ref.name!r} (key {ref.key!r})"


def messages(spec: AgentSpec, context: dict[str, Any], files: Files) -> list[dict[str, Any]]:
    """The conversation's start: the system prompt (with the schema rule) and the filled prompt."""
    try:
        prompt = substitute(spec.prompt, context)
        names = [substitute(f, context) for f in spec.files or []]
    except PlaceholderError as e:
        raise AgentError(f"{FIELD}.prompt: {e}", final=True) from None
    for name in names:
        try:
            prompt += f"\n\n--- {name} ---\n{files.read(name)}"
        except OSError as e:
            raise AgentError(f"{FIELD}.files: {e}", final=True) from None
    system = spec.system_prompt or ""
    if spec.output_schema is not None:
        system += SCHEMA_RULE.format(schema=json.dumps(spec.output_schema, sort_keys=True))
    out: list[dict[str, Any]] = [{"role": "system", "content": system.strip()}] if system.strip() else []
    return [*out, {"role": "user", "content": prompt}]


def _parser(spec: AgentSpec) -> Callable[[str, str | None], Any]:
    def structured(content: str, finish: str | None) -> Any:
        value = parse_json(content, finish, cut_hint=f"raise {FIELD}.maxTokens or ask for a shorter answer")
        problems = schema_errors(value, spec.output_schema or {})
        if problems:
            raise Invalid("it does not match the output schema: " + "; ".join(problems))
        return value

    def text(content: str, finish: str | None) -> str:
        if finish == "length":
            raise Invalid(f"the answer was cut off at the output limit (finish_reason length): raise {FIELD}.maxTokens")
        return content

    return structured if spec.output_schema is not None else text


async def answer(
    spec: AgentSpec,
    context: dict[str, Any],
    *,
    key: str | None = None,
    key_source: str | None = None,
    files: Files | None = None,
    backoff: float = 0.5,
) -> Answer:
    """Ask the model once (or in a bounded tool loop), validated; usage is counted even on failure
    (AgentError.usage)."""
    client = AgentClient(api_key=key, key_source=key_source, backoff=backoff)
    if spec.output_schema is None:
        client.format = "none"  # a free-text answer: no response_format at all
    files = files or Files([Path.cwd()])
    try:
        value = await ask(client, spec, messages(spec, context, files), files)
    except AgentError as e:
        e.usage = client.usage()
        raise
    return Answer(value, client.usage())


async def ask(client: AgentClient, spec: AgentSpec, start: list[dict[str, Any]], files: Files) -> Any:
    url = spec.url.rstrip("/") + "/chat/completions"
    limits = Limits(
        timeout=spec.timeout_seconds, retries=spec.retries, deadline=time.monotonic() + spec.deadline_seconds
    )
    options = {k: v for k, v in (("temperature", spec.temperature), ("max_tokens", spec.max_tokens)) if v is not None}
    schema = ("answer", spec.output_schema) if spec.output_schema is not None else None
    parse = _parser(spec)
    attempts = spec.repair_attempts if spec.output_schema is not None else 0
    common = {"model": spec.model, "schema": schema, "limits": limits, "options": options}
    try:
        async with client.session(float(spec.timeout_seconds)) as http:
            convo = list(start)
            if spec.max_turns:
                content, finish = await _tool_turns(client, http, url, spec, convo, files, limits, schema, options)
                try:
                    return parse(content, finish)
                except Invalid as e:
                    if attempts == 0:
                        raise
                    convo += [{"role": "assistant", "content": content}, {"role": "user", "content": _repair(e)}]
                    attempts -= 1
            return await client.complete_valid(
                http, url, messages=convo, parse=parse, repair=_repair, attempts=attempts, **common
            )
    except ClientError as e:
        final = isinstance(e, _Refused) or e.field.endswith(".url")
        raise AgentError(e.args[0], final=final) from None
    except Invalid as e:
        if spec.output_schema is None:
            raise AgentError(f"{FIELD}: {e}") from None
        rounds = spec.repair_attempts
        raise AgentError(
            f"{FIELD}: the model {spec.model!r} at {display_url(url)} gave no usable answer after {rounds} repair "
            f"attempt{'s' if rounds != 1 else ''}: {client.redact(str(e))}; try a stronger model, raise "
            f"{FIELD}.repairAttempts, or simplify {FIELD}.outputSchema"
        ) from None


def _repair(e: Invalid) -> str:
    return REPAIR_PROMPT.format(error=e)


async def _tool_turns(
    client: AgentClient,
    http: httpx.AsyncClient,
    url: str,
    spec: AgentSpec,
    convo: list[dict[str, Any]],
    files: Files,
    limits: Limits,
    schema: tuple[str, dict[str, Any]] | None,
    options: dict[str, Any],
) -> tuple[str, str | None]:
    """Turns until the model answers without calling a tool; it may read files, nothing else."""
    turns = spec.max_turns or 1
    for _ in range(turns):
        reply = await client.exchange(
            http, url, model=spec.model, messages=convo, schema=schema, limits=limits, tools=[READ_FILE_TOOL], **options
        )
        if not reply.tool_calls:
            return reply.content, reply.finish_reason
        convo.append({"role": "assistant", "content": reply.content or None, "tool_calls": reply.tool_calls})
        convo += [_call(call, files) for call in reply.tool_calls]
    raise AgentError(f"{FIELD}.maxTurns: the model was still calling tools after {turns} turns: raise maxTurns")


def _call(call: dict[str, Any], files: Files) -> dict[str, Any]:
    """A tool's answer; a refused or failed call is told to the model, which can try otherwise."""
    fn = call.get("function") or {}
    try:
        if fn.get("name") != "read_file":
            raise ValueError(f"no tool {fn.get('name')!r}; the only tool is read_file")
        path = json.loads(fn.get("arguments") or "{}").get("path")
        if not isinstance(path, str):
            raise ValueError("read_file needs a string 'path'")
        content = files.read(path)
    except (OSError, ValueError, AttributeError) as e:
        content = f"error: {e}"
    return {"role": "tool", "tool_call_id": call.get("id", ""), "content": content}


def context_of(env: Mapping[str, str]) -> dict[str, Any]:
    """What the prompt's placeholders see: the subtask as the operator rendered it."""
    try:
        item = json.loads(env.get("APWA_ITEM", "null"))
    except ValueError:
        raise AgentError("$APWA_ITEM is not JSON", final=True) from None
    return {
        "item": item,
        "index": int(env.get("APWA_INDEX", "0")),
        "count": int(env.get("APWA_COUNT", "1")),
        "workload": env.get("APWA_WORKLOAD", ""),
    }


def run(env: Mapping[str, str] | None = None, *, backoff: float = 0.5) -> None:
    """The subtask's command: answer, then emit (or fail) through apwa.worker."""
    env = os.environ if env is None else env

    def subtask(spec: AgentSpec, key: str | None, source: str | None) -> Answer:
        files = Files.from_env(env)
        return asyncio.run(answer(spec, context_of(env), key=key, key_source=source, files=files, backoff=backoff))

    report(env, subtask)


def report(env: Mapping[str, str], produce: Callable[[AgentSpec, str | None, str | None], Answer]) -> None:
    """Read the declaration and the key, `produce` the answer, and report it (or why there is none)
    with what was spent."""
    usage: dict[str, Any] | None = None
    try:
        spec = declaration(env)
        key, source = api_key(spec, env)
        result = produce(spec, key, source)
        usage = result.usage.dump()
        worker.emit(result.value, usage=usage)
    except AgentError as e:
        worker.fail(e.message, final=e.final, usage=e.usage.dump() if e.usage else None)
    except ResultTooLarge as e:
        worker.fail(
            f"the answer does not fit the termination message ({e}); set spec.store so that large answers "
            f"go to the object store, or ask for a shorter answer ({FIELD}.maxTokens)",
            final=True,
            usage=usage,
        )
