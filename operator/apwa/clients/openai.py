"""One OpenAI-compatible chat completion, with structured output where the server supports it.

Used by the OpenAI planner, and meant for the agent worker: it knows messages, models and
response formats, nothing of workloads. Servers differ in what `response_format` they accept
(OpenAI: json_schema; many local servers: json_object or nothing), so a refused format is
remembered and the next weaker one is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import httpx

from apwa.clients.http import SNIPPET, ClientError, JsonClient, Limits, display_url
from apwa.common.answers import Invalid

log = logging.getLogger("apwa.clients")

Format = Literal["json_schema", "json_object", "none"]
_FALLBACK: dict[Format, Format] = {"json_schema": "json_object", "json_object": "none"}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Usage:
    """What one client spent: the `usage` object of a result envelope (docs/results.md)."""

    prompt_tokens: int
    completion_tokens: int
    requests: int
    retries: int
    latency_seconds: float

    def dump(self) -> dict[str, Any]:
        return {**asdict(self), "latency_seconds": round(self.latency_seconds, 3)}


@dataclass(slots=True)
class Reply:
    """One assistant message: its text, why it ended, and the tool calls it asks for."""

    content: str
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class ChatClient(JsonClient):
    kind = "OpenAI"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The strongest response_format the server accepted; remembered across calls.
        self.format: Format = "json_schema"
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # What the model is said to have refused to do, in the refusal's message.
        self.task = "plan"

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.requests, self.retries, self.latency)

    def url_hint(self) -> str:
        return " (the base URL, usually ending in /v1; /chat/completions is appended)"

    def status_hint(self, code: int) -> str:
        if code in (400, 422):
            return f": check {self.field}.model and that the server offers chat completions"
        return ""

    def response_format(self, name: str, schema: dict[str, Any] | None) -> dict[str, Any]:
        if self.format == "json_schema" and schema is not None:
            # strict: false, since a schema may allow any object, which strict mode can't express.
            return {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": name, "strict": False, "schema": schema},
                }
            }
        if self.format in ("json_schema", "json_object"):
            return {"response_format": {"type": "json_object"}}
        return {}

    async def exchange(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        model: str | None,
        messages: list[dict[str, Any]],
        schema: tuple[str, dict[str, Any]] | None,
        limits: Limits,
        **options: Any,
    ) -> Reply:
        """One completion as a Reply; `options` are more body keys (temperature, max_tokens, tools)."""
        name, json_schema = schema if schema else ("answer", None)
        while True:
            body = {"model": model, "messages": messages, **options, **self.response_format(name, json_schema)}
            resp = await self.post(client, url, body, limits)
            if resp.status_code in (400, 422) and self.format != "none" and _mentions_format(resp):
                log.info(
                    "%s %s rejected response_format %s; trying %s",
                    self.noun,
                    display_url(url),
                    self.format,
                    _FALLBACK[self.format],
                )
                self.format = _FALLBACK[self.format]
                continue
            if resp.status_code != 200:
                raise self.fail_status(resp, url)
            return self._reply(resp, url)

    async def complete_valid(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        model: str | None,
        messages: list[dict[str, Any]],
        schema: tuple[str, dict[str, Any]] | None,
        limits: Limits,
        parse: Callable[[str, str | None], T],
        repair: Callable[[Invalid], str],
        attempts: int,
        options: dict[str, Any] | None = None,
    ) -> T:
        """An answer that `parse` accepts. One that it rejects (Invalid) goes back to the model with
        `repair(error)` as a follow-up, at most `attempts` times; then the last Invalid is raised."""
        messages = list(messages)
        for round_ in range(attempts + 1):
            reply = await self.exchange(
                client, url, model=model, messages=messages, schema=schema, limits=limits, **(options or {})
            )
            content, finish = reply.content, reply.finish_reason
            try:
                return parse(content, finish)
            except Invalid as e:
                if round_ == attempts:
                    raise
                log.warning(
                    "%s %s: the answer is invalid (%s); asking the model to repair it (%d of %d)",
                    self.noun,
                    display_url(url),
                    self.redact(str(e)),
                    round_ + 1,
                    attempts,
                )
                messages += [{"role": "assistant", "content": content}, {"role": "user", "content": repair(e)}]
        raise AssertionError("unreachable")

    def _reply(self, resp: httpx.Response, url: str) -> Reply:
        try:
            data = resp.json()
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ClientError(
                f"{self.field}.url",
                f"the {self.kind} {self.noun} at {display_url(url)} did not answer a chat completion "
                f"(HTTP 200{self.snippet(resp)}): check {self.field}.url{self.url_hint()}",
            ) from None
        self._count(data.get("usage"))
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        if not content and not calls and message.get("refusal"):
            raise ClientError(
                f"{self.field}.query" if self.task == "plan" else f"{self.field}.prompt",
                f"the model refused to {self.task}: {self.redact(str(message['refusal']))[:SNIPPET]}",
            )
        return Reply(str(content or ""), choice.get("finish_reason"), calls)

    def _count(self, usage: Any) -> None:
        """Tokens as the server reports them; a server that reports none adds none (not guessed)."""
        if not isinstance(usage, dict):
            return
        for key in ("prompt_tokens", "completion_tokens"):
            n = usage.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
                setattr(self, key, getattr(self, key) + n)


def _mentions_format(resp: httpx.Response) -> bool:
    text = resp.text.lower()
    return "response_format" in text or "json_schema" in text or "response format" in text
