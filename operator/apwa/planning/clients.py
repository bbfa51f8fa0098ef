"""Clients of dynamic planners: an HTTP decomposer and any OpenAI-compatible chat-completions server.

Both ask once and return the subtask items; the caller stores them (the operator, owned by the
workload) so a planner is never asked twice for one workload. What both share:

* bounded waiting: every request is limited by `timeoutSeconds` as a whole (connect, send, the
  model thinking, the body trickling in), not only per socket operation;
* bounded retries with jittered exponential backoff on network errors, timeouts, 429 and 5xx,
  honouring Retry-After; other statuses are answers and fail at once with a message that says
  what to change;
* validation with pydantic, and for models a bounded number of repair rounds: the validation
  error goes back to the model as a follow-up message, since models usually fix what they are
  told is wrong;
* secrets stay secret: the API key is only ever put in the Authorization header; every message
  built from a server's answer is redacted, and URLs are shown without credentials or query.

The HTTP decomposer contract (request and response) is defined by the pydantic models
`PlanRequest` and `PlanResponse` below; `contract_schema()` renders it as JSON Schema
(checked in as docs/planner-contract.schema.json, where a test keeps it in sync).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from apwa import __version__
from apwa.api.models import PlannerSpec
from apwa.planning.base import PlanningError

log = logging.getLogger("apwa.planner")

FIELD = "spec.decomposition.planner"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A server asking for a longer pause than this is treated as if it asked for this: the workload
# stalls and retries with its own backoff rather than blocking for an unbounded time.
MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 30.0
SNIPPET = 300  # characters of a server's error text quoted in a message

# Extra checks on the items beyond the contract (templates exist, not empty, ...). Raise
# PlanningError or ValueError with a message a person (or a model) can act on.
Check = Callable[[list[Any]], None]


# ---- the HTTP decomposer contract --------------------------------------------------------------
class _Contract(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class WorkloadRef(_Contract):
    """The workload being planned."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="metadata.name of the ParallelWorkload.")
    namespace: str | None = Field(description="Its namespace (null when planned offline by `apwa plan`).")


class PlanRequest(_Contract):
    """What APWA POSTs (Content-Type: application/json) to an HTTP decomposer."""

    # Open to extra fields: later versions may send more, and decomposers must ignore what they
    # don't know, so the published schema must not forbid it.
    model_config = ConfigDict(extra="allow", title="PlanRequest")
    workload: WorkloadRef
    query: str = Field(description="spec.decomposition.planner.query: what to decompose.")
    context: str | None = Field(description="planner.context, or the text of planner.contextConfigMapRef; or null.")
    max_subtasks: int = Field(ge=1, description="Answers with more subtasks than this are rejected.")
    templates: list[str] = Field(
        description="Names of spec.templates. A subtask that is an object may pick one with a 'template' field; "
        "every other subtask runs with 'default'."
    )


class PlanResponse(_Contract):
    """What an HTTP decomposer answers (HTTP 200, application/json). Other fields are ignored."""

    model_config = ConfigDict(extra="allow", title="PlanResponse")
    subtasks: list[JsonValue] = Field(
        min_length=1,
        description="One JSON value per subtask, in order (like spec.decomposition.items). Each subtask's Job "
        "receives its value as APWA_ITEM and through the {{ item }} placeholders.",
    )


def contract_schema() -> dict[str, Any]:
    """The decomposer contract as one JSON Schema document (request and response under $defs)."""
    defs: dict[str, Any] = {}
    for model in (PlanRequest, PlanResponse):
        schema = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
    defs.pop("JsonValue", None)  # any JSON value: the empty schema, inlined below
    for schema in defs.values():
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)  # pydantic's "Maxsubtasks" says less than the property name
            if prop.get("items") == {"$ref": "#/$defs/JsonValue"}:
                prop["items"] = {}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://apwa.dev/schemas/planner-contract.schema.json",
        "title": "APWA HTTP planner contract",
        "description": "An HTTP decomposer receives a PlanRequest as the JSON body of a POST and answers "
        "HTTP 200 with a PlanResponse. Generated from operator/apwa/planning/clients.py; see docs/planner.md.",
        "anyOf": [{"$ref": "#/$defs/PlanRequest"}, {"$ref": "#/$defs/PlanResponse"}],
        "$defs": dict(sorted(defs.items())),
    }


# ---- what a model must answer ------------------------------------------------------------------
_JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", list: "an array"}


class ModelAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a stray extra key is no reason to ask again
    subtasks: list[JsonValue] = Field(min_length=1)

    @field_validator("subtasks")
    @classmethod
    def _strings_or_objects(cls, items: list[JsonValue]) -> list[JsonValue]:
        # One clear sentence per problem: the message goes back to the model for repair.
        for i, item in enumerate(items):
            if isinstance(item, str) and not item.strip():
                raise ValueError(f"subtask {i} is an empty string")
            if not isinstance(item, str | dict):
                kind = _JSON_KINDS.get(type(item), "null")
                raise ValueError(f"subtask {i} is {kind}; each subtask must be a string or a JSON object")
        return items


# No maxItems: grammar-constrained decoders (vLLM, Ollama) unroll it into huge grammars; the limit
# is in the prompt and enforced on validation (with repair) instead.
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subtasks": {
            "type": "array",
            "minItems": 1,
            "items": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "object"}]},
        }
    },
    "required": ["subtasks"],
    "additionalProperties": False,
}

SYSTEM_PROMPT = """\
You split a task into independent subtasks that will run in parallel, each in its own isolated \
container. The subtasks cannot talk to each other, share no state, and run in no particular order; \
whoever does a subtask sees only that subtask, not the original task and not the other subtasks.

Rules:
- Every subtask is self-contained: it carries all the information needed to do it (names, paths, \
criteria, the expected form of the result), repeating context from the task where needed.
- No subtask depends on another subtask or on its result.
- Together the subtasks cover the whole task, without overlap.
- Return at most {max_subtasks} subtasks; fewer is fine when the task is small.
- Each subtask is a string with complete instructions, or a JSON object when the task asks for \
structured subtasks.{templates}
- Answer with only a JSON object of the form {{"subtasks": [...]}}: no prose, no code fences."""

TEMPLATES_RULE = """
- A subtask that needs one of these job templates is an object with a "template" field naming it: \
{names}. Subtasks without one run with "default"."""

REPAIR_PROMPT = """\
Your answer could not be used: {error}
Answer again with only the corrected JSON object {{"subtasks": [...]}} (at most {max_subtasks} subtasks)."""


def system_prompt(max_subtasks: int, templates: Sequence[str] = ()) -> str:
    others = [t for t in templates if t != "default"]
    rule = TEMPLATES_RULE.format(names=", ".join(json.dumps(t) for t in others)) if others else ""
    return SYSTEM_PROMPT.format(max_subtasks=max_subtasks, templates=rule)


def user_prompt(query: str, context: str | None, workload: str) -> str:
    text = f"Task (workload {workload}):\n{query.strip()}"
    if context and context.strip():
        text += f"\n\nContext:\n{context.strip()}"
    return text


# ---- shared machinery --------------------------------------------------------------------------
class _Invalid(Exception):
    """An answer that arrived but can't be used; the message is fed back to the model."""

    def __init__(self, message: str, *, too_many: bool = False) -> None:
        super().__init__(message)
        self.too_many = too_many


def display_url(url: str) -> str:
    """The URL without user info and query, which may carry credentials."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return f"{u.scheme}://{u.netloc.decode()}{u.path}"  # netloc: host[:port], no user info


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class _Client:
    """Requests with timeouts, retries and redaction; subclasses speak one protocol."""

    kind = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        key_source: str | None = None,
        namespace: str | None = None,
        templates: Sequence[str] = ("default",),
        check: Check | None = None,
        backoff: float = 0.5,
    ) -> None:
        self._api_key = api_key or None
        # Where the key came from, for messages: "Secret 'llm' (key 'apiKey')" or an env var.
        self.key_source = key_source
        self.namespace = namespace
        self.templates = list(templates)
        self.check = check
        self.backoff = backoff

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(api_key={'***' if self._api_key else None})"

    def redact(self, text: str) -> str:
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"apwa/{__version__}"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _http(self, spec: PlannerSpec) -> httpx.AsyncClient:
        # trust_env: a proxy configured for the operator (HTTPS_PROXY, NO_PROXY) applies here too.
        return httpx.AsyncClient(timeout=httpx.Timeout(float(spec.timeout_seconds)), follow_redirects=False)

    def _snippet(self, resp: httpx.Response) -> str:
        """The server's own explanation, short and redacted: most say exactly what is wrong."""
        text = resp.text
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                text = err["message"]
            elif isinstance(err, str):
                text = err
            elif isinstance(body.get("message"), str):
                text = body["message"]
            elif isinstance(body.get("detail"), str):
                text = body["detail"]
        text = " ".join(self.redact(text).split())
        if len(text) > SNIPPET:
            text = text[:SNIPPET] + "..."
        return f" ({text})" if text else ""

    async def _post(self, client: httpx.AsyncClient, spec: PlannerSpec, url: str, body: Any) -> httpx.Response:
        """POST with bounded retries; returns any response that is not worth retrying."""
        attempts = spec.retries + 1
        where = display_url(url)
        delay = self.backoff
        for attempt in range(1, attempts + 1):
            wait: float | None = None
            try:
                async with asyncio.timeout(spec.timeout_seconds):
                    resp = await client.post(url, json=body, headers=self._headers())
            except (TimeoutError, httpx.TimeoutException):
                problem = f"did not answer within timeoutSeconds ({spec.timeout_seconds}s)"
                hint = f"raise {FIELD}.timeoutSeconds, or check that the planner is healthy"
                field = f"{FIELD}.timeoutSeconds"
            except httpx.TransportError as e:
                # httpx's messages name the host and the OS error, never headers.
                problem = f"could not be reached ({type(e).__name__}: {self.redact(str(e)) or 'no detail'})"
                field = f"{FIELD}.url"
                hint = f"check {FIELD}.url and that the planner is reachable from here (DNS, NetworkPolicy, proxy)"
            else:
                if resp.status_code not in RETRY_STATUS:
                    return resp
                problem = f"returned HTTP {resp.status_code}{self._snippet(resp)}"
                hint = (
                    "the planner is rate limiting: raise retries or try later"
                    if resp.status_code == 429
                    else "the planner failed; check its logs"
                )
                wait = _retry_after(resp)
                field = FIELD
            if attempt == attempts:
                tries = f"{attempts} attempts" if attempts > 1 else "1 attempt (retries: 0)"
                raise PlanningError(field, f"the {self.kind} planner at {where} {problem} after {tries}: {hint}")
            if wait is None:
                wait = delay * (0.5 + random.random())  # jitter: many workloads must not retry in step
                delay = min(delay * 2, MAX_BACKOFF)
            log.warning(
                "planner %s %s; retrying in %.1fs (attempt %d of %d)", where, problem, wait, attempt + 1, attempts
            )
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _fail_status(self, resp: httpx.Response, url: str) -> PlanningError:
        code = resp.status_code
        where = display_url(url)
        what = f"the {self.kind} planner at {where} returned HTTP {code}{self._snippet(resp)}"
        if code in (401, 403):
            if self.key_source:
                hint = f"check the API key in {self.key_source}"
                if code == 403:
                    hint += " and that it may use this endpoint (and model)"
                return PlanningError(f"{FIELD}.apiKeySecretRef", f"{what}: {hint}")
            return PlanningError(
                f"{FIELD}.apiKeySecretRef",
                f"{what}: the planner wants credentials; set {FIELD}.apiKeySecretRef to a Secret key "
                "holding the API key (sent as a Bearer token)",
            )
        if code in (404, 405):
            return PlanningError(f"{FIELD}.url", f"{what}: check {FIELD}.url{self._url_hint()}")
        if 300 <= code < 400:
            # Not followed: a redirect would resend the API key to wherever it points.
            target = display_url(resp.headers.get("Location", "")) if resp.headers.get("Location") else "elsewhere"
            return PlanningError(f"{FIELD}.url", f"{what} to {target}: set {FIELD}.url to the final address")
        return PlanningError(FIELD, f"{what}{self._status_hint(code)}")

    def _url_hint(self) -> str:
        return ""

    def _status_hint(self, code: int) -> str:
        return ": check the request the planner expects (docs/planner.md)" if code in (400, 422) else ""

    def _check_items(self, items: list[Any], spec: PlannerSpec) -> None:
        """Raises _Invalid for answers that parse but can't be the plan."""
        if len(items) > spec.max_subtasks:
            raise _Invalid(
                f"{len(items)} subtasks is more than the maximum of {spec.max_subtasks}; "
                f"return at most {spec.max_subtasks} (merge related subtasks)",
                too_many=True,
            )
        if self.check is not None:
            try:
                self.check(items)
            except ValueError as e:  # PlanningError is a ValueError
                raise _Invalid(e.message if isinstance(e, PlanningError) else str(e)) from None


def _errors(e: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in e.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    more = len(e.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class HTTPPlanner(_Client):
    """POST {workload, query, context, maxSubtasks, templates} -> {subtasks: [...]}."""

    kind = "HTTP"

    async def plan(self, spec: PlannerSpec, *, workload: str, context: str | None) -> list[Any]:
        request = PlanRequest(
            workload=WorkloadRef(name=workload, namespace=self.namespace),
            query=spec.query,
            context=context,
            max_subtasks=spec.max_subtasks,
            templates=self.templates,
        )
        started = time.monotonic()
        async with self._http(spec) as client:
            resp = await self._post(client, spec, spec.url, request.model_dump(by_alias=True, mode="json"))
        if not 200 <= resp.status_code < 300:
            raise self._fail_status(resp, spec.url)
        where = display_url(spec.url)
        try:
            data = resp.json()
        except ValueError:
            kind = resp.headers.get("Content-Type", "no Content-Type")
            raise PlanningError(
                f"{FIELD}.url", f"the HTTP planner at {where} answered with {kind}, not JSON: check {FIELD}.url"
            ) from None
        try:
            items = list(PlanResponse.model_validate(data).subtasks)
            self._check_items(items, spec)
        except ValidationError as e:
            raise PlanningError(
                FIELD,
                f"the HTTP planner at {where} answered outside the contract (docs/planner-contract.schema.json): "
                + self.redact(_errors(e)),
            ) from None
        except _Invalid as e:
            field = f"{FIELD}.maxSubtasks" if e.too_many else FIELD
            raise PlanningError(field, f"the HTTP planner at {where} answered an unusable plan: {e}") from None
        log.info("planner %s returned %d subtasks in %.1fs", where, len(items), time.monotonic() - started)
        return items


Format = Literal["json_schema", "json_object", "none"]
_FALLBACK: dict[Format, Format] = {"json_schema": "json_object", "json_object": "none"}
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


class OpenAIPlanner(_Client):
    """Chat completions with a built-in prompt, structured output where the server supports it."""

    kind = "OpenAI"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The strongest response_format the server accepted; remembered for the repair rounds.
        self.format: Format = "json_schema"

    def _url_hint(self) -> str:
        return " (the base URL, usually ending in /v1; /chat/completions is appended)"

    def _status_hint(self, code: int) -> str:
        if code in (400, 422):
            return f": check {FIELD}.model and that the server offers chat completions"
        return ""

    def _response_format(self) -> dict[str, Any]:
        if self.format == "json_schema":
            return {
                "response_format": {
                    "type": "json_schema",
                    # strict: false, since a subtask may be any object, which strict mode can't express.
                    "json_schema": {"name": "subtasks", "strict": False, "schema": ANSWER_SCHEMA},
                }
            }
        if self.format == "json_object":
            return {"response_format": {"type": "json_object"}}
        return {}

    async def _complete(
        self, client: httpx.AsyncClient, spec: PlannerSpec, url: str, messages: list[dict[str, str]]
    ) -> tuple[str, str | None]:
        """One completion: (content, finish_reason). Falls back to weaker response formats when refused."""
        while True:
            body = {"model": spec.model, "messages": messages, **self._response_format()}
            resp = await self._post(client, spec, url, body)
            if resp.status_code in (400, 422) and self.format != "none" and _mentions_format(resp):
                log.info(
                    "planner %s rejected response_format %s; trying %s",
                    display_url(url),
                    self.format,
                    _FALLBACK[self.format],
                )
                self.format = _FALLBACK[self.format]
                continue
            if resp.status_code != 200:
                raise self._fail_status(resp, url)
            try:
                data = resp.json()
                choice = data["choices"][0]
                message = choice["message"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise PlanningError(
                    f"{FIELD}.url",
                    f"the OpenAI planner at {display_url(url)} did not answer a chat completion "
                    f"(HTTP 200{self._snippet(resp)}): check {FIELD}.url{self._url_hint()}",
                ) from None
            content = message.get("content")
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not content and message.get("refusal"):
                raise PlanningError(
                    f"{FIELD}.query",
                    f"the model refused to plan: {self.redact(str(message['refusal']))[:SNIPPET]}",
                )
            return str(content or ""), choice.get("finish_reason")

    def _parse(self, content: str, finish_reason: str | None, spec: PlannerSpec) -> list[Any]:
        text = _THINK.sub("", content).strip()  # reasoning models may prepend their thoughts
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1).strip()
        if not text:
            raise _Invalid("the answer was empty")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            cut = " (it was cut off at the output limit: return fewer or shorter subtasks)"
            raise _Invalid(
                f"it is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
                + (cut if finish_reason == "length" else "")
            ) from None
        if isinstance(value, list):  # a bare array is an unambiguous answer, accept it as such
            value = {"subtasks": value}
        try:
            items: list[Any] = list(ModelAnswer.model_validate(value).subtasks)
        except ValidationError as e:
            raise _Invalid('it does not match {"subtasks": [string or object, ...]}: ' + _errors(e)) from None
        self._check_items(items, spec)
        return items

    async def plan(self, spec: PlannerSpec, *, workload: str, context: str | None) -> list[Any]:
        url = spec.url.rstrip("/") + "/chat/completions"
        where = display_url(url)
        messages = [
            {"role": "system", "content": system_prompt(spec.max_subtasks, self.templates)},
            {"role": "user", "content": user_prompt(spec.query, context, workload)},
        ]
        started = time.monotonic()
        problem = _Invalid("no answer")
        async with self._http(spec) as client:
            for round_ in range(spec.repair_attempts + 1):
                content, finish = await self._complete(client, spec, url, messages)
                try:
                    items = self._parse(content, finish, spec)
                except _Invalid as e:
                    problem = e
                    if round_ < spec.repair_attempts:
                        log.warning(
                            "planner %s: the answer is invalid (%s); asking the model to repair it (%d of %d)",
                            where,
                            self.redact(str(e)),
                            round_ + 1,
                            spec.repair_attempts,
                        )
                        messages += [
                            {"role": "assistant", "content": content},
                            {
                                "role": "user",
                                "content": REPAIR_PROMPT.format(error=e, max_subtasks=spec.max_subtasks),
                            },
                        ]
                    continue
                log.info(
                    "planner %s (model %s) returned %d subtasks in %.1fs",
                    where,
                    spec.model,
                    len(items),
                    time.monotonic() - started,
                )
                return items
        rounds = spec.repair_attempts
        after = f"after {rounds} repair attempt{'s' if rounds != 1 else ''}" if rounds else "(repairAttempts: 0)"
        field = f"{FIELD}.maxSubtasks" if problem.too_many else FIELD
        hint = (
            f"raise {FIELD}.maxSubtasks or ask for fewer subtasks in the query"
            if problem.too_many
            else f"try a stronger model, raise {FIELD}.repairAttempts, or make the query more specific"
        )
        raise PlanningError(
            field,
            f"the model {spec.model!r} at {where} gave no usable plan {after}: {self.redact(str(problem))}; {hint}",
        )


def _mentions_format(resp: httpx.Response) -> bool:
    text = resp.text.lower()
    return "response_format" in text or "json_schema" in text or "response format" in text


def make_planner(
    spec: PlannerSpec,
    *,
    api_key: str | None = None,
    key_source: str | None = None,
    namespace: str | None = None,
    templates: Sequence[str] = ("default",),
    check: Check | None = None,
    backoff: float = 0.5,
) -> HTTPPlanner | OpenAIPlanner:
    """The client for spec.type. `backoff` is the first retry's base delay (tests shorten it)."""
    cls = OpenAIPlanner if spec.type == "OpenAI" else HTTPPlanner
    return cls(
        api_key=api_key,
        key_source=key_source,
        namespace=namespace,
        templates=templates,
        check=check,
        backoff=backoff,
    )
