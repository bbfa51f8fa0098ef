"""One OpenAI-compatible chat completion, with structured output where the server supports it.

Used by the OpenAI planner, and meant for the agent worker: it knows messages, models and
response formats, nothing of workloads. Servers differ in what `response_format` they accept
(OpenAI: json_schema; many local servers: json_object or nothing), so a refused format is
remembered and the next weaker one is tried.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import httpx

from apwa.clients.http import SNIPPET, ClientError, JsonClient, Limits, display_url

log = logging.getLogger("apwa.clients")

Format = Literal["json_schema", "json_object", "none"]
_FALLBACK: dict[Format, Format] = {"json_schema": "json_object", "json_object": "none"}


class ChatClient(JsonClient):
    kind = "OpenAI"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The strongest response_format the server accepted; remembered across calls.
        self.format: Format = "json_schema"

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

    async def complete(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        model: str | None,
        messages: list[dict[str, str]],
        schema: tuple[str, dict[str, Any]] | None,
        limits: Limits,
    ) -> tuple[str, str | None]:
        """One completion: (content, finish_reason). Falls back to weaker response formats when refused."""
        name, json_schema = schema if schema else ("answer", None)
        while True:
            body = {"model": model, "messages": messages, **self.response_format(name, json_schema)}
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
            return self._content(resp, url)

    def _content(self, resp: httpx.Response, url: str) -> tuple[str, str | None]:
        try:
            choice = resp.json()["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ClientError(
                f"{self.field}.url",
                f"the {self.kind} {self.noun} at {display_url(url)} did not answer a chat completion "
                f"(HTTP 200{self.snippet(resp)}): check {self.field}.url{self.url_hint()}",
            ) from None
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not content and message.get("refusal"):
            raise ClientError(
                f"{self.field}.query",
                f"the model refused to plan: {self.redact(str(message['refusal']))[:SNIPPET]}",
            )
        return str(content or ""), choice.get("finish_reason")


def _mentions_format(resp: httpx.Response) -> bool:
    text = resp.text.lower()
    return "response_format" in text or "json_schema" in text or "response format" in text
