"""The PETALS baseline (reference section 7): how PETALS places blocks and routes requests.

Placement: servers join one at a time in a seeded random order. Each takes as many blocks as fit
beside a fixed KV cache pool (`attn_cache_tokens` per block, whatever the concurrency), then the
window whose sorted per-block throughput is lexicographically smallest (the weakest blocks),
and adds its throughput there. Routing: Dijkstra with PETALS' edge weights (half the RTT plus
18 ms per hop, plus per-block compute time, and half the RTT back from the last server).

Our problem has no d_model, forward_rps or server-to-server pings, so: d_model and the KV
grouping come from the model preset of the same name (catalog.MODELS), else d_model is taken as
cache_bytes_per_token / 4 (K and V in 16 bit, no GQA); forward_rps is 1 / prefill per-token time,
network_rps as unbounded, and every hop uses the client's RTT (hub and spoke).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .catalog import MODELS
from .evaluate import uncovered
from .model import Placement, Plan, Problem
from .paths import ChainGraph, FloatArray, best_chain, build_graph, linear_costs
from .perf import predicted_for

SOLVER = "petals"
HOP_OVERHEAD_S = 0.018  # PETALS' per-hop overhead in its routing graph
FULL_PENALTY_S = 10.0  # PETALS' alloc_delay penalty for a server without free cache
GIB = 1 << 30


@dataclass(frozen=True)
class PetalsParams:
    seed: int = 0
    # The PETALS version the paper replicated reserves 4096 tokens per block for multi-head
    # attention and 16384 for grouped-query attention (current PETALS: 8192 / 32768).
    attn_cache_tokens: int = 4096
    d_model: int = 0  # 0: unknown, estimated from cache_bytes_per_token (multi-head attention)

    @staticmethod
    def for_problem(problem: Problem, seed: int = 0) -> PetalsParams:
        """Use the model preset's d_model and KV grouping when the problem names a known model."""
        preset = MODELS.get(problem.model.name)
        if preset is None or preset.d_model == 0:
            return PetalsParams(seed=seed)
        tokens = 4096 if preset.kv_groups == 1 else 16384
        return PetalsParams(seed=seed, attn_cache_tokens=tokens, d_model=preset.d_model)


def autograd_bytes(problem: Problem, params: PetalsParams) -> int:
    """PETALS keeps 2 GiB x d_model / 14336 for autograd (BLOOM-176B's d_model is 14336)."""
    d_model = params.d_model or problem.model.cache_bytes_per_token / 4
    return int(2 * GIB * d_model / 14336)


def cache_bytes_per_block(problem: Problem, params: PetalsParams) -> int:
    # cache_bytes_per_token already counts KV heads, so GQA's 1/num_kv_groups is included.
    return problem.model.cache_bytes_per_token * params.attn_cache_tokens


def choose_num_blocks(problem: Problem, params: PetalsParams) -> list[int]:
    per_block = problem.model.block_bytes + cache_bytes_per_block(problem, params)
    reserve = autograd_bytes(problem, params)
    return [
        max(min((s.memory_bytes - reserve) // per_block, problem.num_blocks), 0)
        for s in problem.servers
    ]


def server_throughput(problem: Problem, j: int, blocks: int) -> float:
    per_token = problem.servers[j].prefill_s_per_block.per_token_s
    forward_rps = 1.0 / per_token if per_token > 0 else math.inf
    return forward_rps / ((blocks + 1) / 2)


def cache_slots(problem: Problem, params: PetalsParams, blocks: int) -> int:
    """Block-session slots in the fixed pool: the pool does not grow or shrink with concurrency."""
    return (blocks * cache_bytes_per_block(problem, params)) // problem.session_bytes_per_block


def place(
    problem: Problem,
    params: PetalsParams,
    blocks: Sequence[int] | None = None,
    order: Sequence[int] | None = None,
) -> tuple[Placement, ...]:
    """PETALS block selection. `blocks` and `order` override the count and join order (the ablations)."""
    n_blocks = problem.num_blocks
    m = list(blocks) if blocks is not None else choose_num_blocks(problem, params)
    if order is None:
        join = list(range(len(problem.servers)))
        random.Random(params.seed).shuffle(join)
    else:
        join = list(order)
    thr = [0.0] * n_blocks
    starts: dict[int, int] = {}
    for j in join:
        mj = m[j]
        if mj <= 0:
            continue
        a = min(range(n_blocks - mj + 1), key=lambda a: sorted(thr[a : a + mj]))
        starts[j] = a
        t = server_throughput(problem, j, mj)
        for b in range(a, a + mj):
            thr[b] += t
    return tuple(Placement(problem.servers[j].name, starts[j], m[j]) for j in sorted(starts))


def hop_costs(
    problem: Problem, graph: ChainGraph, client: int, full_rows: Sequence[int] = ()
) -> FloatArray:
    """PETALS' routing weights as a cost matrix for paths.best_chain."""
    half_rtt = np.array([problem.link(client, j).rtt_s / 2 for j in graph.servers])
    tau = np.array([problem.servers[j].decode_s_per_block for j in graph.servers])
    per_hop = half_rtt + HOP_OVERHEAD_S
    per_hop[np.asarray(graph.ends) == problem.num_blocks] += half_rtt[
        np.asarray(graph.ends) == problem.num_blocks
    ]
    for row in full_rows:
        per_hop[row] += FULL_PENALTY_S
    return linear_costs(graph, per_hop, tau)


def route_clients(
    problem: Problem, placement: tuple[Placement, ...]
) -> tuple[dict[str, tuple[str, ...]], list[list[tuple[int, int]]]]:
    idx = {s.name: i for i, s in enumerate(problem.servers)}
    graph = build_graph(problem.num_blocks, [(idx[p.server], p.start, p.blocks) for p in placement])
    routes: dict[str, tuple[str, ...]] = {}
    hops_all: list[list[tuple[int, int]]] = []
    for c, client in enumerate(problem.clients):
        _, hops = best_chain(graph, hop_costs(problem, graph, c))
        server_hops = [(graph.servers[row], k) for row, k in hops]
        routes[client.name] = tuple(problem.servers[j].name for j, _ in server_hops)
        hops_all.append(server_hops)
    return routes, hops_all


def solve(problem: Problem, concurrent_requests: int, params: PetalsParams) -> Plan:
    placement = place(problem, params)
    missing = uncovered(problem.num_blocks, placement)
    if missing:
        return Plan(
            SOLVER,
            False,
            reason=(
                f"memory: PETALS' block choice leaves blocks {missing[0]}..{missing[-1]} on no server "
                f"(each server reserves a KV pool of {params.attn_cache_tokens} tokens per block)"
            ),
            stats=MappingProxyType({"seed": params.seed}),
        )
    routes, hops_all = route_clients(problem, placement)
    return Plan(
        SOLVER,
        True,
        placement,
        MappingProxyType(routes),
        predicted_for(problem, hops_all, None),
        MappingProxyType(
            {
                "seed": params.seed,
                "attn_cache_tokens": params.attn_cache_tokens,
                "requested_concurrent_requests": concurrent_requests,
            }
        ),
    )
