"""JSON over HTTP to servers the user names (planners, models): bounded, retried, redacted.

* bounded waiting: every request is limited by `timeout` as a whole (connect, send, the model
  thinking, the body trickling in), not only per socket operation;
* bounded retries with jittered exponential backoff on network errors, timeouts, 408, 429 and
  5xx, honouring Retry-After; other statuses are answers, returned to the caller;
* secrets stay secret: the API key is only ever put in the Authorization header; every message
  built from a server's answer is redacted, and URLs are shown without credentials or query.

Errors name the setting to change: `field` is where the caller's configuration lives (for the
planner "spec.decomposition.planner"), and the hints say which part of it to look at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from apwa import __version__
from apwa.common.retry import Backoff, retry_after

log = logging.getLogger("apwa.clients")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A server asking for a longer pause than this is treated as if it asked for this: the caller
# then fails (and retries with its own backoff) rather than blocking for an unbounded time.
MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 30.0
SNIPPET = 300  # characters of a server's error text quoted in a message


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one request: each attempt as a whole within `timeout` seconds (the setting
    is named timeoutSeconds in messages), and `retries` more attempts after the first."""

    timeout: float
    retries: int
    # time.monotonic() by which every attempt and every wait must have ended (the agent's
    # deadlineSeconds): an attempt gets what is left of it, a wait that would pass it is not made.
    deadline: float | None = None


class ClientError(ValueError):
    """A request that failed for good. `field` names the setting to look at."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def display_url(url: str) -> str:
    """The URL without user info and query, which may carry credentials."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return f"{u.scheme}://{u.netloc.decode()}{u.path}"  # netloc: host[:port], no user info


class JsonClient:
    """POSTs JSON with timeouts, retries and redaction. `kind` and `noun` name the server in
    messages ("the OpenAI planner at ..."); `backoff` is the first retry's base delay (tests
    shorten it)."""

    kind = ""
    noun = "planner"

    def __init__(
        self,
        *,
        field: str,
        api_key: str | None = None,
        key_source: str | None = None,
        backoff: float = 0.5,
    ) -> None:
        self.field = field
        self._api_key = api_key or None
        # Where the key came from, for messages: "Secret 'llm' (key 'apiKey')" or an env var.
        self.key_source = key_source
        self.backoff = backoff
        # What this client spent, for usage reports: attempts made, of which retries, and the
        # seconds spent waiting for answers (backoff pauses excluded).
        self.requests = 0
        self.retries = 0
        self.latency = 0.0

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(api_key={'***' if self._api_key else None})"

    def redact(self, text: str) -> str:
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"apwa/{__version__}"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    @staticmethod
    def session(timeout: float) -> httpx.AsyncClient:
        # trust_env: a proxy configured for the operator (HTTPS_PROXY, NO_PROXY) applies here too.
        # No redirects: one would resend the API key to wherever it points.
        return httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False)

    def snippet(self, resp: httpx.Response) -> str:
        """The server's own explanation, short and redacted: most say exactly what is wrong."""
        text = resp.text
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            text = _explanation(body) or text
        text = " ".join(self.redact(text).split())
        if len(text) > SNIPPET:
            text = text[:SNIPPET] + "..."
        return f" ({text})" if text else ""

    async def post(self, client: httpx.AsyncClient, url: str, body: Any, limits: Limits) -> httpx.Response:
        """POST with bounded retries; returns any response that is not worth retrying."""
        timeout = limits.timeout
        attempts = limits.retries + 1
        where = display_url(url)
        backoff = Backoff(self.backoff, MAX_BACKOFF, jitter=(0.5, 1.5))
        for attempt in range(1, attempts + 1):
            wait: float | None = None
            budget = self._budget(limits, where)
            self.requests += 1
            started = time.monotonic()
            try:
                async with asyncio.timeout(budget):
                    resp = await client.post(url, json=body, headers=self.headers())
            except (TimeoutError, httpx.TimeoutException):
                cut = budget < timeout
                problem = (
                    f"did not answer before the deadline ({budget:.1f}s were left)"
                    if cut
                    else f"did not answer within timeoutSeconds ({timeout}s)"
                )
                field = f"{self.field}.deadlineSeconds" if cut else f"{self.field}.timeoutSeconds"
                hint = f"raise {field}, or check that the {self.noun} is healthy"
            except httpx.TransportError as e:
                # httpx's messages name the host and the OS error, never headers.
                problem = f"could not be reached ({type(e).__name__}: {self.redact(str(e)) or 'no detail'})"
                field = f"{self.field}.url"
                hint = (
                    f"check {self.field}.url and that the {self.noun} is reachable from here "
                    "(DNS, NetworkPolicy, proxy)"
                )
            else:
                if resp.status_code not in RETRY_STATUS:
                    self.latency += time.monotonic() - started
                    return resp
                problem = f"returned HTTP {resp.status_code}{self.snippet(resp)}"
                hint = (
                    f"the {self.noun} is rate limiting: raise retries or try later"
                    if resp.status_code == 429
                    else f"the {self.noun} failed; check its logs"
                )
                wait = retry_after(resp.headers.get("Retry-After"), cap=MAX_RETRY_AFTER)
                field = self.field
            self.latency += time.monotonic() - started
            # Jittered: many workloads must not retry in step. A Retry-After overrides it.
            jittered = backoff.next()
            wait = jittered if wait is None else wait
            late = limits.deadline is not None and time.monotonic() + wait >= limits.deadline
            if attempt == attempts or late:
                tries = f"{attempt} attempts" if attempt > 1 else "1 attempt"
                tries += " (retries: 0)" if attempts == 1 else " (the deadline came first)" if late else ""
                raise ClientError(field, f"the {self.kind} {self.noun} at {where} {problem} after {tries}: {hint}")
            log.warning(
                "%s %s %s; retrying in %.1fs (attempt %d of %d)", self.noun, where, problem, wait, attempt + 1, attempts
            )
            self.retries += 1
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _budget(self, limits: Limits, where: str) -> float:
        """This attempt's time: timeoutSeconds, or what is left before the deadline if less."""
        if limits.deadline is None:
            return limits.timeout
        left = limits.deadline - time.monotonic()
        if left <= 0:
            raise ClientError(
                f"{self.field}.deadlineSeconds",
                f"the deadline passed before the {self.kind} {self.noun} at {where} was asked: raise deadlineSeconds",
            )
        return min(limits.timeout, left)

    def fail_status(self, resp: httpx.Response, url: str) -> ClientError:
        """The error for a final answer that is not a success, with what to change."""
        code = resp.status_code
        what = f"the {self.kind} {self.noun} at {display_url(url)} returned HTTP {code}{self.snippet(resp)}"
        if code in (401, 403):
            return ClientError(f"{self.field}.apiKeySecretRef", f"{what}: {self._credentials_hint(code)}")
        if code in (404, 405):
            return ClientError(f"{self.field}.url", f"{what}: check {self.field}.url{self.url_hint()}")
        if 300 <= code < 400:
            target = display_url(resp.headers.get("Location", "")) if resp.headers.get("Location") else "elsewhere"
            return ClientError(f"{self.field}.url", f"{what} to {target}: set {self.field}.url to the final address")
        return ClientError(self.field, f"{what}{self.status_hint(code)}")

    def _credentials_hint(self, code: int) -> str:
        if not self.key_source:
            return (
                f"the {self.noun} wants credentials; set {self.field}.apiKeySecretRef to a Secret key "
                "holding the API key (sent as a Bearer token)"
            )
        hint = f"check the API key in {self.key_source}"
        return hint + (" and that it may use this endpoint (and model)" if code == 403 else "")

    def url_hint(self) -> str:
        return ""

    def status_hint(self, code: int) -> str:
        return f": check the request the {self.noun} expects (docs/planner.md)" if code in (400, 422) else ""


def _explanation(body: dict[str, Any]) -> str | None:
    """Where servers put the reason in a JSON error (OpenAI, FastAPI, Kubernetes-style)."""
    err = body.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    for key in ("message", "detail"):
        if isinstance(body.get(key), str):
            return body[key]
    return None
