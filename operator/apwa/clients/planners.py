"""Dynamic planners: an HTTP decomposer and any OpenAI-compatible chat-completions server.

Both ask once and return the subtask items; the caller stores them (the operator, owned by the
workload) so a planner is never asked twice for one workload. What is asked and what an answer
must be lives in apwa.planning.contract (pure); the requests are made here with the shared
clients. For a model, an invalid answer goes back to it as a follow-up message a bounded number
of times, since models usually fix what they are told is wrong.

`ask` is shared by the operator (controller/dynamic.py, which reads the API key and the context
from the cluster and stores the answer before any Job exists) and by `apwa plan` / `apwa run
--local` (`plan_offline`, which takes them from the environment and the manifest file).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
from pydantic import ValidationError

from apwa.api.models import ParallelWorkload, ParallelWorkloadSpec, PlannerSpec
from apwa.clients.http import ClientError, JsonClient, Limits, display_url
from apwa.clients.openai import ChatClient
from apwa.planning.base import DEFAULT_MAX_SUBTASKS, PlanningError
from apwa.planning.contract import (
    ANSWER_SCHEMA,
    FIELD,
    REPAIR_PROMPT,
    Check,
    Invalid,
    PlanRequest,
    PlanResponse,
    WorkloadRef,
    check_items,
    errors,
    parse_answer,
    system_prompt,
    user_prompt,
)
from apwa.planning.dynamic import ENV_API_KEY, offline_context, planner_of
from apwa.planning.plan import plan

log = logging.getLogger("apwa.planner")


def _limits(spec: PlannerSpec) -> Limits:
    return Limits(timeout=spec.timeout_seconds, retries=spec.retries)


@contextmanager
def _as_planning_errors() -> Iterator[None]:
    """A failed request is a planning problem of the workload, reported on its field."""
    try:
        yield
    except ClientError as e:
        raise PlanningError(e.field, e.message) from None


class _Planning:
    """What both planners know of the workload: its namespace, its template names, extra checks.
    Mixed in before the HTTP client class, whose constructor takes the rest."""

    def __init__(
        self,
        *,
        namespace: str | None = None,
        templates: Sequence[str] = ("default",),
        check: Check | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(field=FIELD, **kwargs)
        self.namespace = namespace
        self.templates = list(templates)
        self.check = check


class HTTPPlanner(_Planning, JsonClient):
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
        with _as_planning_errors():
            async with self.session(float(spec.timeout_seconds)) as client:
                body = request.model_dump(by_alias=True, mode="json")
                resp = await self.post(client, spec.url, body, _limits(spec))
            if not 200 <= resp.status_code < 300:
                raise self.fail_status(resp, spec.url)
        items = self._items(_json(resp, spec.url), spec)
        elapsed = time.monotonic() - started
        log.info("planner %s returned %d subtasks in %.1fs", display_url(spec.url), len(items), elapsed)
        return items

    def _items(self, data: Any, spec: PlannerSpec) -> list[Any]:
        where = display_url(spec.url)
        try:
            items = list(PlanResponse.model_validate(data).subtasks)
            check_items(items, spec, self.check)
        except ValidationError as e:
            raise PlanningError(
                FIELD,
                f"the HTTP planner at {where} answered outside the contract (docs/planner-contract.schema.json): "
                + self.redact(errors(e)),
            ) from None
        except Invalid as e:
            field = f"{FIELD}.maxSubtasks" if e.too_many else FIELD
            raise PlanningError(field, f"the HTTP planner at {where} answered an unusable plan: {e}") from None
        return items


def _json(resp: httpx.Response, url: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        kind = resp.headers.get("Content-Type", "no Content-Type")
        raise PlanningError(
            f"{FIELD}.url", f"the HTTP planner at {display_url(url)} answered with {kind}, not JSON: check {FIELD}.url"
        ) from None


class OpenAIPlanner(_Planning, ChatClient):
    """Chat completions with a built-in prompt; invalid answers are sent back for repair."""

    async def plan(self, spec: PlannerSpec, *, workload: str, context: str | None) -> list[Any]:
        url = spec.url.rstrip("/") + "/chat/completions"
        messages = [
            {"role": "system", "content": system_prompt(spec.max_subtasks, self.templates)},
            {"role": "user", "content": user_prompt(spec.query, context, workload)},
        ]
        started = time.monotonic()
        async with self.session(float(spec.timeout_seconds)) as client:
            try:
                with _as_planning_errors():
                    items = await self.complete_valid(
                        client,
                        url,
                        model=spec.model,
                        messages=messages,
                        schema=("subtasks", ANSWER_SCHEMA),
                        limits=_limits(spec),
                        parse=lambda content, finish: parse_answer(content, finish, spec, self.check),
                        repair=lambda e: REPAIR_PROMPT.format(error=e, max_subtasks=spec.max_subtasks),
                        attempts=spec.repair_attempts,
                    )
            except Invalid as e:
                raise self._no_plan(spec, url, e) from None
        log.info(
            "planner %s (model %s) returned %d subtasks in %.1fs",
            display_url(url),
            spec.model,
            len(items),
            time.monotonic() - started,
        )
        return items

    def _no_plan(self, spec: PlannerSpec, url: str, problem: Invalid) -> PlanningError:
        rounds = spec.repair_attempts
        after = f"after {rounds} repair attempt{'s' if rounds != 1 else ''}" if rounds else "(repairAttempts: 0)"
        field = f"{FIELD}.maxSubtasks" if problem.too_many else FIELD
        hint = (
            f"raise {FIELD}.maxSubtasks or ask for fewer subtasks in the query"
            if problem.too_many
            else f"try a stronger model, raise {FIELD}.repairAttempts, or make the query more specific"
        )
        return PlanningError(
            field,
            f"the model {spec.model!r} at {display_url(url)} gave no usable plan {after}: "
            f"{self.redact(str(problem))}; {hint}",
        )


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


async def ask(
    spec: ParallelWorkloadSpec,
    *,
    workload: str,
    namespace: str | None,
    context: str | None,
    api_key: str | None,
    key_source: str | None,
    max_subtasks: int = DEFAULT_MAX_SUBTASKS,
    backoff: float = 0.5,
) -> list[Any]:
    """The planner's subtask items, already checked against the spec (templates exist, size).

    The check runs before anything is stored: a stored plan is never recomputed, so a plan that
    `plan()` would reject must not be stored. For a model, a failed check is fed back for repair.
    """
    p = planner_of(spec)

    def check(items: list[Any]) -> None:
        plan(spec, data=items, max_subtasks=max_subtasks)

    client = make_planner(
        p,
        api_key=api_key,
        key_source=key_source,
        namespace=namespace,
        templates=sorted(spec.templates),
        check=check,
        backoff=backoff,
    )
    return await client.plan(p, workload=workload, context=context)


def plan_offline(workload: ParallelWorkload, config_maps: Mapping[str, Mapping[str, str]] | None = None) -> list[Any]:
    """Ask the planner from this machine, for `apwa plan` and `apwa run --local`.

    The API key comes from $APWA_PLANNER_API_KEY (the operator reads apiKeySecretRef instead);
    the context ConfigMap from `config_maps`, the ConfigMaps of the manifest file.
    """
    p = planner_of(workload.spec)
    api_key: str | None = None
    if p.api_key_secret_ref is not None:
        api_key = os.environ.get(ENV_API_KEY, "").strip()
        if not api_key:
            ref = p.api_key_secret_ref
            raise PlanningError(
                f"{FIELD}.apiKeySecretRef",
                f"the planner needs the API key that the operator reads from Secret {ref.name!r} (key {ref.key!r}); "
                f"to plan from this machine, export {ENV_API_KEY}",
            )
    context = offline_context(p, config_maps)
    return asyncio.run(
        ask(
            workload.spec,
            workload=workload.metadata.name,
            namespace=workload.metadata.namespace,
            context=context,
            api_key=api_key,
            key_source=f"the environment variable {ENV_API_KEY}",
        )
    )
