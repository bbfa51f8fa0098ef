"""Pydantic models of the ParallelWorkload spec and status.

These models are the single source of truth: the CRD's OpenAPI schema is generated from them
(`apwa crd`), and every consumer (CLI, local runner, operator) validates through them. Rules
that the structural schema can't express carry CEL (`x-kubernetes-validations`) so the API
server rejects them at apply time; the same rules are repeated here in Python so `apwa validate`
and the local runner give the same answer without a cluster.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from apwa import API_VERSION, KIND
from apwa.common.schema import SchemaError, check_schema

DEFAULT_TEMPLATE = "default"
STRATEGIES = ("items", "range", "shards", "matrix", "configMapRef", "planner", "objects")
# Beyond this many items the spec itself would approach etcd's object size limit; larger
# inputs belong in a ConfigMap (or several shards of work per subtask).
MAX_INLINE_ITEMS = 10_000
# Strategies whose subtasks can't name a template: they all run spec.templates.default.
TEMPLATE_FREE_STRATEGIES = ("range", "shards", "matrix", "objects")
TEMPLATE_NAME_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def cel(rule: str, message: str, **extra: str) -> dict[str, str]:
    return {"rule": rule, "message": message, **extra}


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class RangeSpec(Model):
    """Integers start, start+step, ... below end; each subtask's item is one integer."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.end > (has(self.start) ? self.start : 0)", "range.end must be greater than range.start"),
            ]
        }
    )
    start: int = Field(0, description="First value (inclusive).")
    end: int = Field(description="End value (exclusive).")
    step: int = Field(1, ge=1, description="Distance between values; must be >= 1.")

    @model_validator(mode="after")
    def _end_after_start(self) -> RangeSpec:
        if self.end <= self.start:
            raise ValueError(f"range.end ({self.end}) must be greater than range.start ({self.start})")
        return self


class ShardsSpec(Model):
    """`count` subtasks; each receives its shard index and the shard count."""

    count: int = Field(ge=1, le=100_000, description="Number of shards.")


class ConfigMapSource(Model):
    """Subtask items held in a ConfigMap in the workload's namespace."""

    name: str = Field(min_length=1, max_length=253, description="ConfigMap name.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the ConfigMap's data.")
    format: Literal["Auto", "JSON", "JSONLines"] = Field(
        "Auto",
        description="JSON: one JSON array. JSONLines: one JSON value per line. Auto: array if it starts with '['.",
    )


class SecretKeyRef(Model):
    name: str = Field(min_length=1, description="Secret name, in the workload's namespace.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class ConfigMapKeyRef(Model):
    name: str = Field(min_length=1, max_length=253, description="ConfigMap name, in the workload's namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the ConfigMap's data.")


class PlannerSpec(Model):
    """A dynamic plan: an HTTP decomposer or an OpenAI-compatible model returns the subtasks."""

    # Asked once: the operator stores the answer (ConfigMap `<workload>-plan`, owned by the
    # workload) before the first Job and plans from it ever after (docs/planner.md).
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.type != 'OpenAI' || has(self.model)", "planner.model is required for type OpenAI"),
                cel(
                    "!(has(self.context) && has(self.contextConfigMapRef))",
                    "set planner.context or planner.contextConfigMapRef, not both",
                ),
            ]
        }
    )
    type: Literal["HTTP", "OpenAI"] = Field(
        description="HTTP: POST {workload, query, context, maxSubtasks} to url, which answers {subtasks: [...]} "
        "(docs/planner-contract.schema.json). OpenAI: an OpenAI-compatible chat-completions server."
    )
    url: str = Field(
        min_length=1,
        pattern=r"^https?://",
        description="HTTP: the decomposer's URL. OpenAI: the base URL that /chat/completions is appended to "
        "(e.g. https://api.openai.com/v1, http://vllm:8000/v1, http://ollama:11434/v1).",
    )
    model: str | None = Field(None, min_length=1, description="Model name (required for OpenAI).")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the API key, sent as 'Authorization: Bearer <key>'."
    )
    query: str = Field(min_length=1, description="What to decompose into independent subtasks.")
    context: str | None = Field(None, description="Extra context passed to the planner.")
    context_config_map_ref: ConfigMapKeyRef | None = Field(None, description="Context read from a ConfigMap key.")
    max_subtasks: int = Field(100, ge=1, le=100_000, description="Reject plans with more subtasks than this.")
    timeout_seconds: int = Field(60, ge=1, le=3600, description="Timeout of one planner request.")
    retries: int = Field(3, ge=0, le=10, description="Retries on network errors, 429 and 5xx (with backoff).")
    repair_attempts: int = Field(
        2,
        ge=0,
        le=5,
        description="OpenAI: times an invalid answer is sent back to the model with the validation error.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PlannerSpec:
        if self.type == "OpenAI" and not self.model:
            raise ValueError("planner.model is required for type OpenAI")
        if self.context is not None and self.context_config_map_ref is not None:
            raise ValueError("set planner.context or planner.contextConfigMapRef, not both")
        return self


_PROMPT_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
PROMPT_NAMES = ("index", "count", "workload", "item")
REDUCE_PROMPT_NAMES = ("count", "workload")
# The environment through which a subtask's container receives the agent declaration (JSON of
# AgentSpec, without any secret) and the API key (from the Secret, by secretKeyRef).
ENV_AGENT = "APWA_AGENT"
ENV_AGENT_API_KEY = "APWA_AGENT_API_KEY"
# The reduce's pod also gets results.reduce.agent (JSON): `apwa-agent` then merges the results.
ENV_AGENT_REDUCE = "APWA_AGENT_REDUCE"


def _check_placeholders(text: str, names: tuple[str, ...], field: str) -> None:
    for name in _PROMPT_PLACEHOLDER.findall(text):
        if name.partition(".")[0] not in names:
            raise ValueError(f"{field}: unknown placeholder {{{{ {name} }}}} (use {', '.join(names)})")


def _check_output_schema(schema: dict[str, Any] | None, field: str) -> None:
    if schema is None:
        return
    try:
        check_schema(schema, field)
    except SchemaError as e:
        raise ValueError(str(e)) from None


class AgentPrice(Model):
    """What 1,000 tokens cost, as the model's provider prices them."""

    prompt: float = Field(ge=0, le=1_000, description="Price of 1,000 prompt (input) tokens.")
    completion: float = Field(ge=0, le=1_000, description="Price of 1,000 completion (output) tokens.")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code, for display.")


class AgentSpec(Model):
    """The built-in LLM agent (the `apwa-agent` command of the worker image): one model, reached
    the same way by every subtask of the workload. docs/agents.md."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="Base URL of an OpenAI-compatible server; /chat/completions is appended "
        "(https://api.openai.com/v1, http://vllm.llm:8000/v1, http://ollama.llm:11434/v1).",
    )
    model: str = Field(min_length=1, max_length=256, description="Model name the server serves.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret key holding the API key. It reaches the agent's container only as an environment "
        "variable from the Secret (secretKeyRef), never through the spec, the status or logs.",
    )
    system_prompt: str | None = Field(None, max_length=32_768, description="The system message.")
    prompt: str = Field(
        min_length=1,
        max_length=32_768,
        description="The user message, filled from the subtask: {{ item }}, {{ item.field }}, {{ index }}, "
        "{{ count }}, {{ workload }} (the placeholders of templates).",
    )
    files: list[str] | None = Field(
        None,
        max_length=32,
        description="Files appended to the prompt (placeholders allowed, e.g. '{{ item }}'): relative to the "
        "worker's working directory or under the subtask's input directory; nothing outside them.",
    )
    output_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema the answer must satisfy (the structured-output subset: type, properties, "
        "required, items, enum, const, bounds, pattern, anyOf/allOf/oneOf, local $ref). The answer is then "
        "parsed as JSON, validated, and sent back for repair when it fails.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="Completion tokens per request.")
    timeout_seconds: int = Field(120, ge=1, le=3600, description="Timeout of one model request, as a whole.")
    deadline_seconds: int = Field(
        900,
        ge=1,
        le=86_400,
        description="All of one subtask's model calls, retries and repairs included, end within this; "
        "keep it below the template's activeDeadlineSeconds.",
    )
    retries: int = Field(
        8, ge=0, le=100, description="Retries per request on network errors, 408, 429 and 5xx (within the deadline)."
    )
    repair_attempts: int = Field(
        2, ge=0, le=5, description="Times an answer that fails outputSchema is sent back with the errors."
    )
    max_turns: int | None = Field(
        None,
        ge=1,
        le=50,
        description="Enables the read_file tool: at most this many model turns per subtask (tool calls "
        "included). Unset: one answer, no tools.",
    )
    max_total_tokens: int | None = Field(
        None,
        ge=1,
        description="Token budget of the whole workload (prompt plus completion, every subtask's and the reduce's): "
        "once the finished subtasks have spent it, no new subtask starts and the workload fails with reason "
        "TokenBudgetExhausted (the ones running finish and count).",
    )
    price_per_1k_tokens: AgentPrice | None = Field(
        None,
        alias="pricePer1kTokens",
        description="The model's price, for status.usage.estimatedCost (an estimate: the server's bill rules).",
    )
    egress: list[EgressPeer] | None = Field(
        None,
        max_length=8,
        description="NetworkPolicy egress rules to the model server (added to spec.isolation's): its pods by "
        "selector, or its address block. Unset: the url's address when it is an IP address, else nothing "
        "(NetworkPolicy has no host names: docs/agents.md, 'Egress').",
    )

    @model_validator(mode="after")
    def _usable(self) -> AgentSpec:
        for field, text in (("prompt", self.prompt), *(("files", f) for f in self.files or [])):
            _check_placeholders(text, PROMPT_NAMES, f"agent.{field}")
        _check_output_schema(self.output_schema, "agent.outputSchema")
        return self


class ObjectsSpec(Model):
    """Inputs from the store: one subtask per object under `prefix` of spec.store's bucket, or per
    group of consecutive objects (in key order) within the limits below (docs/inputs.md)."""

    # Listed once by the operator and stored before the first Job, like a planner's answer.
    prefix: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[^/].*/$",
        description="The 'folder' of the input objects in spec.store's bucket: a key prefix ending in '/', without "
        "a leading '/', independent of spec.store.s3.prefix, e.g. 'datasets/logs/2026-11/'. Every object under it, "
        "at any depth, is an input; folder markers are skipped.",
    )
    max_objects_per_subtask: int = Field(
        1, ge=1, le=10_000, description="At most this many objects per subtask (consecutive in key order)."
    )
    max_bytes_per_subtask: int | None = Field(
        None,
        ge=1,
        description="At most this many bytes of objects per subtask; an object larger than this gets a "
        "subtask of its own. Unset: no byte limit.",
    )


class Decomposition(Model):
    """How the workload splits into subtasks. Exactly one strategy must be set."""

    model_config = ConfigDict(
        json_schema_extra={
            # At least one strategy: CEL can't count `items`, but the schema can count properties.
            "minProperties": 1,
            "x-kubernetes-validations": [
                # CEL can't see `items` (a list of untyped JSON values has no CEL type), so the API
                # server checks the typed strategies and the operator checks the rest (Stalled).
                cel(
                    "[" + ", ".join(f"has(self.{s})" for s in STRATEGIES if s != "items") + "]"
                    ".filter(x, x).size() <= 1",
                    "exactly one of " + ", ".join(STRATEGIES) + " must be set",
                ),
            ],
        }
    )
    items: list[Any] | None = Field(
        None,
        max_length=MAX_INLINE_ITEMS,
        description="Static list of JSON values, one subtask each. An object may pick a template "
        "with a 'template' field.",
    )
    range: RangeSpec | None = None
    shards: ShardsSpec | None = None
    matrix: dict[str, Annotated[list[Any], Field(min_length=1)]] | None = Field(
        None,
        description="Cartesian product of the axes, in the order the axes and values are written; "
        "each subtask's item is an object {axis: value}. Every axis needs at least one value.",
        # A free-form object for the API server: CEL can't type a map of untyped lists, so the
        # axis checks live in the validator below (and surface as a Stalled condition).
        json_schema_extra={"minProperties": 1, "x-apwa-free-form": True},
    )
    config_map_ref: ConfigMapSource | None = None
    planner: PlannerSpec | None = None
    objects: ObjectsSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Decomposition:
        chosen = [s for s in STRATEGIES if getattr(self, _snake(s)) is not None]
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise ValueError(f"exactly one of {', '.join(STRATEGIES)} must be set (got: {got})")
        if self.matrix is not None:
            if not self.matrix:
                raise ValueError("matrix needs at least one axis")
            for axis, values in self.matrix.items():
                if not values:
                    raise ValueError(f"matrix axis {axis!r} needs at least one value")
        return self

    @property
    def strategy(self) -> str:
        return next(s for s in STRATEGIES if getattr(self, _snake(s)) is not None)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


# podFailurePolicy, as Kubernetes defines it (batch/v1 PodFailurePolicy), minus FailIndex: subtask
# Jobs are not Indexed. Kubernetes' own limits: 20 rules, 255 exit codes, 20 pod conditions.
MAX_POD_FAILURE_RULES = 20
PodFailureAction = Literal["FailJob", "FailIndex", "Ignore", "Count"]


class PodFailurePolicyOnExitCodes(Model):
    """Exit codes of one container (or any container) that a rule matches."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.operator != 'In' || !(0 in self.values)", "onExitCodes: 0 cannot be used with operator In")
            ]
        }
    )

    container_name: str | None = Field(None, description="The container whose exit code counts (default: any).")
    operator: Literal["In", "NotIn"] = Field(description="In: any of values; NotIn: none of values.")
    values: list[int] = Field(
        min_length=1, max_length=255, description="Exit codes, unique and ascending; 0 is not allowed with In."
    )

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> PodFailurePolicyOnExitCodes:
        if self.values != sorted(set(self.values)):
            raise ValueError("onExitCodes.values must be unique and in ascending order")
        if self.operator == "In" and 0 in self.values:
            raise ValueError("onExitCodes.values: 0 cannot be used with operator In")
        return self


class PodFailurePolicyOnPodCondition(Model):
    """A pod condition a rule matches (e.g. DisruptionTarget: the pod was evicted or preempted)."""

    type: str = Field(min_length=1, description="Pod condition type, e.g. DisruptionTarget.")
    status: Literal["True", "False", "Unknown"] = "True"


class PodFailurePolicyRule(Model):
    """One rule: the first rule that matches a failed pod decides what the failure means."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.action != 'FailIndex'",
                    "action FailIndex needs an Indexed Job; a subtask's Job is not one: use FailJob",
                ),
                cel(
                    "has(self.onExitCodes) != (has(self.onPodConditions) && size(self.onPodConditions) > 0)",
                    "a rule needs exactly one of onExitCodes and onPodConditions",
                ),
            ]
        }
    )

    action: PodFailureAction = Field(
        description="FailJob: fail the subtask at once. Ignore: retry without counting against backoffLimit. "
        "Count: count as usual. (FailIndex is for Indexed Jobs; subtask Jobs are not.)"
    )
    on_exit_codes: PodFailurePolicyOnExitCodes | None = None
    on_pod_conditions: list[PodFailurePolicyOnPodCondition] | None = Field(None, max_length=20)

    @model_validator(mode="after")
    def _one_requirement(self) -> PodFailurePolicyRule:
        if self.action == "FailIndex":
            raise ValueError("action FailIndex needs an Indexed Job; a subtask's Job is not one: use FailJob")
        if (self.on_exit_codes is None) == (not self.on_pod_conditions):
            raise ValueError("a rule needs exactly one of onExitCodes and onPodConditions")
        return self


class PodFailurePolicy(Model):
    """The subtask Job's podFailurePolicy (batch/v1). The operator puts its own first rule in front,
    FailJob on the final exit code of apwa.worker (86), unless these rules already decide 86."""

    rules: list[PodFailurePolicyRule] = Field(max_length=MAX_POD_FAILURE_RULES)


class JobTemplate(Model):
    """A Job template: the pod template plus the Job-level knobs."""

    pod_template: dict[str, Any] = Field(
        description="A core/v1 PodTemplateSpec (metadata and spec). Its containers run the subtask.",
        # Only what the operator relies on is typed; the API server validates the rest when the Job
        # is created, and the operator reports its answer on the workload.
        json_schema_extra={
            "required": ["spec"],
            "properties": {
                "metadata": {"type": "object", "additionalProperties": True},
                "spec": {
                    "type": "object",
                    "additionalProperties": True,
                    "required": ["containers"],
                    "properties": {
                        "containers": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "object", "additionalProperties": True, "required": ["name"]},
                        }
                    },
                },
            },
        },
    )
    backoff_limit: int = Field(0, ge=0, le=100, description="Retries of a failed subtask (Job backoffLimit).")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Deadline of one subtask's Job.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete a finished subtask Job after this long (its result is kept)."
    )
    pod_failure_policy: PodFailurePolicy | None = Field(
        None, description="The Job's podFailurePolicy: which exit codes and pod conditions fail, retry or count."
    )

    @model_validator(mode="after")
    def _has_containers(self) -> JobTemplate:
        spec = self.pod_template.get("spec")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not isinstance(containers, list) or not containers:
            raise ValueError("podTemplate.spec.containers needs at least one container")
        for i, c in enumerate(containers):
            if not isinstance(c, dict) or not c.get("name"):
                raise ValueError(f"podTemplate.spec.containers[{i}].name is required")
        if self.pod_failure_policy:
            _check_pod_failure_policy(self.pod_failure_policy, [c["name"] for c in containers])
        return self


def _check_pod_failure_policy(policy: PodFailurePolicy, containers: list[str]) -> None:
    """What Kubernetes checks against the pod template. (Room for the operator's own rule is checked
    where that rule is added: rendering.)"""
    for i, rule in enumerate(policy.rules):
        name = rule.on_exit_codes.container_name if rule.on_exit_codes else None
        if name is not None and name not in containers:
            raise ValueError(f"podFailurePolicy.rules[{i}].onExitCodes.containerName {name!r} is not a container")


class FailurePolicy(Model):
    """How many failed subtasks the workload tolerates. Past that, no new Job starts and it fails."""

    max_failed_subtasks: int | None = Field(None, ge=0, description="Failed subtasks tolerated (default 0).")
    max_failed_ratio: float | None = Field(
        None, ge=0, le=1, description="Failed fraction of all subtasks tolerated, 0..1."
    )

    def allowed(self, total: int) -> int:
        """The number of failures tolerated for a workload of `total` subtasks."""
        limits = []
        if self.max_failed_subtasks is not None:
            limits.append(self.max_failed_subtasks)
        if self.max_failed_ratio is not None:
            limits.append(int(self.max_failed_ratio * total))
        return min(limits) if limits else 0


class EgressPort(Model):
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class EgressRule(Model):
    cidr: str = Field(min_length=1, description="Destination CIDR, e.g. 10.0.0.0/8 or 0.0.0.0/0.")
    except_: list[str] | None = Field(None, alias="except", description="CIDRs excluded from cidr.")
    ports: list[EgressPort] | None = Field(None, description="Allowed ports; all ports when empty.")


class Isolation(Model):
    """Isolation of subtask pods. Every default is the strict one; relaxing takes an explicit field."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.egress) || self.egress != 'Custom' || "
                    "(has(self.egressRules) && size(self.egressRules) > 0)",
                    "egress Custom needs egressRules",
                ),
            ]
        }
    )
    egress: Literal["None", "DNS", "Custom"] = Field(
        "None", description="None: no egress at all. DNS: cluster DNS only. Custom: DNS plus egressRules."
    )
    egress_rules: list[EgressRule] | None = Field(None, description="Allowed destinations when egress=Custom.")
    runtime_class_name: str | None = Field(
        None,
        description="RuntimeClass of the subtask pods, for a sandbox runtime the cluster offers (gVisor runsc, "
        "Kata Containers). Unset: the node's default runtime.",
    )
    pod_security: Literal["Restricted", "Unrestricted"] = Field(
        "Restricted",
        description="Restricted enforces non-root, no privilege escalation, all capabilities dropped, "
        "seccomp RuntimeDefault and (unless readOnlyRootFilesystem is false) a read-only root file system. "
        "Unrestricted leaves the pod template's security settings as written.",
    )
    read_only_root_filesystem: bool = Field(
        True,
        description="Under Restricted pod security, every container's root file system is read-only and a "
        "writable emptyDir is mounted at /tmp. false lets the pod template decide.",
    )
    service_account_token: bool = Field(False, description="Mount the pod's service account token.")

    @model_validator(mode="after")
    def _custom_needs_rules(self) -> Isolation:
        if self.egress == "Custom" and not self.egress_rules:
            raise ValueError("egress Custom needs egressRules")
        return self


class S3Location(Model):
    """An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, versitygw, GCS in S3 mode, ...)."""

    bucket: str = Field(min_length=3, max_length=63, description="Bucket name; it must exist.")
    prefix: str = Field(
        "",
        max_length=512,
        pattern=r"^([^/].*/)?$",
        description="Key prefix for everything this workload stores; empty or ending in '/', no leading '/'.",
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^/]+/?$",
        description="http(s)://host[:port] of an S3-compatible server; unset: AWS S3 in `region`.",
    )
    region: str = Field("us-east-1", min_length=1, description="Region (signing region for other servers).")
    path_style: bool = Field(
        False,
        description="Path-style requests (endpoint/bucket/key) instead of virtual-hosted ones "
        "(bucket.endpoint/key); most self-hosted S3-compatible servers need true.",
    )
    credentials_secret: str = Field(
        min_length=1,
        max_length=253,
        description="Secret in the workload's namespace with keys accessKeyId and secretAccessKey (and optionally "
        "sessionToken). Only the operator and the injected store sidecars read it; subtask containers never see it. "
        "The operator must be allowed to read it: chart value rbac.secretNames.",
    )


class EgressPeer(Model):
    """How subtask pods reach a server (the store, the model): NetworkPolicy has no host names, so
    name its pods or its address."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.cidr) != (has(self.podSelector) || has(self.namespaceSelector))",
                    "give either cidr or podSelector/namespaceSelector",
                ),
            ]
        }
    )
    pod_selector: dict[str, Any] | None = Field(
        None,
        description="Label selector of the server's pods (a NetworkPolicy peer).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    namespace_selector: dict[str, Any] | None = Field(
        None,
        description="Label selector of the server's namespace; unset with podSelector: the workload's namespace.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    cidr: str | None = Field(None, min_length=1, description="The server's address block, e.g. 10.0.5.20/32.")
    ports: list[EgressPort] | None = Field(
        None, description="The server's ports (its pods' container ports, not a Service's); all ports when empty."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> EgressPeer:
        if (self.cidr is None) == (self.pod_selector is None and self.namespace_selector is None):
            raise ValueError("give either cidr or podSelector/namespaceSelector")
        return self


class StoreSpec(Model):
    """An object store for what does not belong in etcd: subtask results of any size (up to
    MAX_STORED_RESULT_BYTES), every subtask's outcome, and the reduce step's input."""

    s3: S3Location
    egress: list[EgressPeer] | None = Field(
        None,
        max_length=8,
        description="NetworkPolicy egress rules that let subtask pods reach the store (added to spec.isolation's). "
        "For a store named only by a host name outside the cluster, give its addresses as cidr rules.",
    )
    upload_timeout_seconds: int = Field(
        300,
        ge=10,
        le=3600,
        description="How long a subtask pod's store sidecar keeps retrying its upload after the main container "
        "ended (the pod's termination grace period).",
    )


class ReduceAgent(Model):
    """The reduce step as a model call over all results (`apwa-agent` in the reduce's template), with
    spec.agent's server, model, key and limits. Results that don't fit one prompt are merged in
    rounds: groups of at most `fanIn` are merged, then the merges, until one answer is left."""

    system_prompt: str | None = Field(None, max_length=32_768, description="The system message.")
    prompt: str = Field(
        min_length=1,
        max_length=32_768,
        description="The user message; the results (or the partial merges of a previous round) follow it as "
        "JSON lines. Placeholders: {{ count }}, {{ workload }}.",
    )
    output_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema of the merged answer (and of every partial merge), as agent.outputSchema.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="Completion tokens per request.")
    max_input_chars: int = Field(
        60_000,
        ge=1_000,
        le=4_000_000,
        description="Most characters of results in one prompt (about 4 per token): keep prompt plus answer "
        "inside the model's context.",
    )
    fan_in: int = Field(8, ge=2, le=64, description="Most results (or partial merges) merged by one request.")

    @model_validator(mode="after")
    def _usable(self) -> ReduceAgent:
        _check_placeholders(self.prompt, REDUCE_PROMPT_NAMES, "results.reduce.agent.prompt")
        _check_output_schema(self.output_schema, "results.reduce.agent.outputSchema")
        return self


class ReduceSpec(Model):
    """A reduce Job that receives all collected results once every subtask has finished."""

    template: str = Field(
        DEFAULT_TEMPLATE, pattern=TEMPLATE_NAME_RE, description="Name of the template that runs the reduce step."
    )
    agent: ReduceAgent | None = Field(
        None,
        description="Run the reduce as an LLM call over the results (needs spec.agent; the template's main "
        "container runs `apwa-agent`). docs/agents.md, 'An LLM reduce'.",
    )


class ResultsSpec(Model):
    reduce: ReduceSpec | None = None


MAX_RETRY_ATTEMPT = 1000


class RetrySpec(Model):
    """A request to run the failed subtasks again (`apwa retry`, or set by hand or by GitOps).

    `attempt` names the request: each new value is one retry, applying the same value again
    changes nothing. Jobs of a retry are named `<workload>-<index>-r<attempt>`."""

    attempt: int = Field(
        ge=1,
        le=MAX_RETRY_ATTEMPT,
        description="The retry to run: one more than status.retry.attempt for a new retry (apwa retry does "
        "that). Applying a value already observed (status.retry.attempt) changes nothing.",
    )
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        max_length=10_000,
        description="Retry only these failed subtasks (subtasks that did not fail are left alone). Unset: every "
        "failed subtask except those that reported a final failure (apwa.worker.fail(..., final=True)); "
        "naming an index retries it even then.",
    )


MAX_CHUNK_SIZE = 10_000


class ExecutionSpec(Model):
    """How subtasks become Jobs: one Job each (the default), or packed as the indexes of Indexed Jobs."""

    mode: Literal["Jobs", "Packed"] = Field(
        "Jobs",
        description="Jobs: one Job per subtask. Packed: chunks of subtasks run as the indexes of Indexed Jobs "
        "(one pod per subtask still, each with its own item, result and exit code; half the objects). "
        "Packed pods read their item from a mounted plan ($APWA_PLAN_PATH, apwa.worker.item()), so "
        "{{ index }} and {{ item }} placeholders are refused (docs/scaling.md). Immutable.",
    )
    chunk_size: int = Field(
        500,
        ge=1,
        le=MAX_CHUNK_SIZE,
        description="Packed: subtasks per Indexed Job at most. A chunk starts when the window has room for a "
        "whole chunk, so keep it well below spec.parallelism.",
    )


class ParallelWorkloadSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.results) || !has(self.results.reduce) || "
                    "(has(self.results.reduce.template) ? self.results.reduce.template : 'default') "
                    "in self.templates",
                    "results.reduce.template names a template that is not in spec.templates",
                ),
                cel(
                    "'default' in self.templates || !(has(self.decomposition.range) || "
                    "has(self.decomposition.shards) || has(self.decomposition.matrix) || "
                    "has(self.decomposition.objects))",
                    "spec.templates needs a 'default' template (range, shards, matrix and objects subtasks use it)",
                ),
                cel(
                    "!has(self.execution) || !has(self.execution.mode) || self.execution.mode != 'Packed' || "
                    "!has(self.decomposition.objects)",
                    "spec.execution.mode Packed does not support decomposition.objects yet; use mode Jobs",
                ),
                cel(
                    "!has(self.decomposition.objects) || has(self.store)",
                    "decomposition.objects needs spec.store",
                ),
                cel(
                    "!has(self.results) || !has(self.results.reduce) || !has(self.results.reduce.agent) || "
                    "has(self.agent)",
                    "results.reduce.agent needs spec.agent (its server, model and key)",
                ),
            ]
        }
    )
    decomposition: Decomposition = Field(
        description="How the workload splits into independent subtasks. Immutable.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "decomposition is immutable once set")]},
    )
    templates: dict[str, JobTemplate] = Field(
        description="Named Job templates. Subtasks use 'default' unless their item names another.",
        min_length=1,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-validations": [cel("self == oldSelf", "templates are immutable once set")],
        },
    )
    parallelism: int = Field(
        10,
        ge=1,
        le=10_000,
        description="Maximum unfinished subtask Jobs at once (with Kueue: created, admitted or not).",
    )
    failure_policy: FailurePolicy | None = None
    isolation: Isolation | None = None
    results: ResultsSpec | None = None
    store: StoreSpec | None = Field(
        None,
        description="An S3-compatible object store for large results and for the outcomes (instead of "
        "ConfigMaps in etcd). Unset: results travel in termination messages (4 KiB) and outcomes in ConfigMaps. "
        "Immutable.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "store is immutable once set")]},
    )
    agent: AgentSpec | None = Field(
        None,
        description="The built-in LLM agent: subtask pods get its declaration and API key in their environment, "
        "for the worker image's `apwa-agent` command (docs/agents.md). Immutable.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "agent is immutable once set")]},
    )
    execution: ExecutionSpec | None = Field(
        None,
        description="Packed execution (Indexed Jobs) for large workloads; unset: one Job per subtask. Immutable.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "execution is immutable once set")]},
    )
    suspend: bool = Field(
        False,
        description="Stop starting Jobs and suspend active ones (Kueue's: by deactivating their Workloads); "
        "false resumes.",
    )
    retry: RetrySpec | None = Field(
        None,
        description="Run the failed subtasks again, keeping every success (docs/operate.md). A new attempt "
        "value starts a new retry; the status goes back to Running.",
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the workload (and everything it made) this long after it finished."
    )

    @property
    def packed(self) -> int | None:
        """Packed execution's chunk size; None: one Job per subtask."""
        e = self.execution
        return e.chunk_size if e is not None and e.mode == "Packed" else None

    @model_validator(mode="after")
    def _templates_exist(self) -> ParallelWorkloadSpec:
        for name in self.templates:
            if not re.match(TEMPLATE_NAME_RE, name) or len(name) > 63:
                raise ValueError(
                    f"spec.templates: the name {name!r} must be a DNS label (lowercase, digits, '-', at most 63)"
                )
        if self.results and self.results.reduce and self.results.reduce.template not in self.templates:
            raise ValueError(
                f"results.reduce.template {self.results.reduce.template!r} is not in spec.templates "
                f"(have: {', '.join(sorted(self.templates))})"
            )
        strategy = self.decomposition.strategy
        if strategy in TEMPLATE_FREE_STRATEGIES and DEFAULT_TEMPLATE not in self.templates:
            # The CRD's CEL rule says the same; without it here, `apwa validate` passed what the
            # API server refuses (found by tests/integration/test_fuzz_crd.py).
            raise ValueError(
                f"spec.templates needs a '{DEFAULT_TEMPLATE}' template ({strategy} subtasks use it; "
                f"have: {', '.join(sorted(self.templates))})"
            )
        if self.packed and self.decomposition.objects is not None:
            raise ValueError(
                "spec.execution.mode Packed does not support decomposition.objects yet (each pod's inputs are "
                "fetched by its own Job); use mode Jobs"
            )
        if self.decomposition.objects is not None and self.store is None:
            raise ValueError("decomposition.objects needs spec.store (the bucket the objects are listed from)")
        if self.results and self.results.reduce and self.results.reduce.agent and self.agent is None:
            raise ValueError("results.reduce.agent needs spec.agent (its server, model and key)")
        self._agent_fits_templates()
        self._agent_reachable()
        # Items that name a template are checked by the planner (it sees ConfigMap and planner data too).
        return self

    def _agent_fits_templates(self) -> None:
        """The agent must give up (and report what it spent) before Kubernetes kills its pod."""
        if self.agent is None:
            return
        # A reduce's own template runs no agent unless it is an LLM reduce; 'default' always may.
        reduce = self.results.reduce if self.results else None
        for name, t in sorted(self.templates.items()):
            if reduce and name == reduce.template and name != DEFAULT_TEMPLATE and reduce.agent is None:
                continue
            if t.active_deadline_seconds is not None and self.agent.deadline_seconds >= t.active_deadline_seconds:
                raise ValueError(
                    f"agent.deadlineSeconds ({self.agent.deadline_seconds}) must be less than "
                    f"spec.templates.{name}.activeDeadlineSeconds ({t.active_deadline_seconds}): lower the first "
                    "or raise the second"
                )

    def _agent_reachable(self) -> None:
        """Pods that could never reach the model would each fail after all their retries: say so now."""
        if self.agent is None or self.agent.egress or self.isolation_or_default.egress == "Custom":
            return
        host = urlsplit(self.agent.url).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"agent.url names the host {host!r}, and a NetworkPolicy can't allow host names: give "
                "agent.egress (the model server's pods by podSelector/namespaceSelector, or its cidr), or "
                "isolation.egress Custom with egressRules (docs/agents.md, 'Egress')"
            ) from None

    @property
    def failure(self) -> FailurePolicy:
        return self.failure_policy or FailurePolicy()

    @property
    def isolation_or_default(self) -> Isolation:
        return self.isolation or Isolation()


class Condition(Model):
    model_config = ConfigDict(extra="ignore")
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Counts(Model):
    total: int = 0
    pending: int = Field(0, description="Not started yet: no Job yet, or a Job awaiting admission.")
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    awaiting_admission: int = Field(
        0, description="Subtasks whose Job waits for Kueue to admit it (docs/kueue.md); counted in pending."
    )


class FailedSubtask(Model):
    index: int
    job: str | None = None
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    failed_pods: int | None = Field(
        None, description="Pods that failed and counted against backoffLimit: 1 for a failure that was not retried."
    )


class ResultsRef(Model):
    """Where every subtask's outcome is kept. Without a store: ConfigMaps `<configMapPrefix><n>` for
    n < chunks, owned by the workload, each holding up to 200 outcomes under `key` (gzip in
    binaryData when large). With one: objects `<objectPrefix><n>.json` in `bucket` (n zero-padded
    to 6 digits), each up to 1,000 outcomes."""

    config_map_prefix: str | None = None
    chunks: int = 0
    key: str | None = None
    bucket: str | None = None
    object_prefix: str | None = None
    chunk_size: int | None = None


class RetryRound(Model):
    """One accepted retry: what it reset, with the first failures it reset (bounded)."""

    attempt: int
    time: str | None = None
    retried: int = 0
    skipped_final: int | None = Field(None, description="Failed subtasks left alone: they reported a final failure.")
    ignored: int | None = Field(None, description="Indices in spec.retry.indices that had not failed.")
    failures: list[FailedSubtask] | None = Field(None, max_length=10, description="The first failures it reset.")


class RetryStatus(Model):
    attempt: int = Field(0, description="The last retry observed (spec.retry.attempt); 0: none.")
    history: list[RetryRound] | None = Field(None, max_length=5, description="The last retries, oldest first.")


class Usage(Model):
    """What the agents spent (docs/agents.md, "Usage"): summed once per finished subtask, over every
    pod of it, plus the reduce's; from the servers' own token counts, nothing estimated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    requests: int = Field(0, description="Model requests, retries included.")
    retries: int = Field(0, description="Requests that repeated one (429, 5xx, network errors).")
    model_seconds: str | None = Field(None, description="Seconds spent waiting for the model (backoff excluded).")
    reports: int = Field(0, description="Pods' reports summed: subtasks that reported usage, plus the reduce.")
    estimated_cost: str | None = Field(None, description="From spec.agent.pricePer1kTokens, e.g. '0.4210 USD'.")


Phase = Literal["Pending", "Planning", "Running", "Suspended", "Reducing", "Succeeded", "Failed"]


class ParallelWorkloadStatus(Model):
    model_config = ConfigDict(extra="ignore")
    phase: Phase | None = None
    observed_generation: int | None = None
    progress: str | None = Field(None, description="succeeded/total, for kubectl get.")
    counts: Counts | None = None
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = None
    conditions: list[Condition] | None = Field(None, max_length=16)
    failed_subtasks: list[FailedSubtask] | None = Field(
        None, max_length=50, description="The first failed subtasks by index (capped)."
    )
    result: Any = Field(None, description="The reduce output, or a bounded summary of the results.")
    results_ref: ResultsRef | None = None
    retry: RetryStatus | None = None

    usage: Usage | None = None


class Metadata(Model):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None


class ParallelWorkload(Model):
    """A whole manifest, as `kubectl apply` would send it."""

    api_version: Literal["apwa.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ParallelWorkload"] = KIND
    metadata: Metadata
    spec: ParallelWorkloadSpec
    status: ParallelWorkloadStatus | None = None
