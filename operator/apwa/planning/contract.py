"""What a dynamic planner is asked and must answer: the HTTP decomposer contract, the prompt
for a model, and the checks an answer passes before it can be the plan. Pure: the requests are
made by apwa.clients.planners.

The HTTP decomposer contract (request and response) is defined by the pydantic models
`PlanRequest` and `PlanResponse` below; `contract_schema()` renders it as JSON Schema
(checked in as docs/planner-contract.schema.json, where a test keeps it in sync).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from apwa.api.models import PlannerSpec
from apwa.common.answers import Invalid, parse_json
from apwa.planning.base import PlanningError

FIELD = "spec.decomposition.planner"

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
        "HTTP 200 with a PlanResponse. Generated from operator/apwa/planning/contract.py; see docs/planner.md.",
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


# ---- checking an answer ------------------------------------------------------------------------
def errors(e: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in e.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    more = len(e.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_answer(content: str, finish_reason: str | None, spec: PlannerSpec, check: Check | None) -> list[Any]:
    """A model's answer as subtask items; Invalid (sent back to the model) when unusable."""
    value = parse_json(content, finish_reason, cut_hint="return fewer or shorter subtasks")
    if isinstance(value, list):  # a bare array is an unambiguous answer, accept it as such
        value = {"subtasks": value}
    try:
        items: list[Any] = list(ModelAnswer.model_validate(value).subtasks)
    except ValidationError as e:
        raise Invalid('it does not match {"subtasks": [string or object, ...]}: ' + errors(e)) from None
    check_items(items, spec, check)
    return items


def check_items(items: list[Any], spec: PlannerSpec, check: Check | None) -> None:
    """Raises Invalid for answers that parse but can't be the plan."""
    if len(items) > spec.max_subtasks:
        raise Invalid(
            f"{len(items)} subtasks is more than the maximum of {spec.max_subtasks}; "
            f"return at most {spec.max_subtasks} (merge related subtasks)",
            too_many=True,
        )
    if check is not None:
        try:
            check(items)
        except ValueError as e:  # PlanningError is a ValueError
            raise Invalid(e.message if isinstance(e, PlanningError) else str(e)) from None
