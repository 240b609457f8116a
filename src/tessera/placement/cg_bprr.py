"""CG-BPRR: the paper's conservative greedy block placement and request routing (Algorithm 1).

1. Conservative block count: m_j = min(floor(M_j / (s_m + s_c |R|)), L), so that every server has
   room for all |R| sessions on all its blocks and routing never competes for memory (Lemma 3).
2. Greedy placement: servers in increasing amortised per-block time t~_j = tau_j + t*_j / m_j
   (t*_j: the farthest client's RTT) take the window with the largest total amortised time T
   against a dummy server, among windows holding an under-served block; once every block is
   served, the window with the lexicographically smallest sorted capacity.
3. Shortest-path routing per client (paths.best_chain).
The Theorem 2 bound is returned as `bound_per_token_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .model import Placement, Plan, Problem
from .paths import best_chain, build_graph, linear_costs
from .perf import farthest_rtt, predicted_for

SOLVER = "cg-bprr"


def conservative_blocks(problem: Problem, concurrent_requests: int) -> list[int]:
    s_m, s_c = problem.model.block_bytes, problem.session_bytes_per_block
    per_block = s_m + s_c * concurrent_requests
    return [min(s.memory_bytes // per_block, problem.num_blocks) for s in problem.servers]


def block_capacity(problem: Problem, concurrent_requests: int) -> int:
    """Corollary 1: CG-BP is feasible iff this sum is at least L."""
    return sum(conservative_blocks(problem, concurrent_requests))


def max_feasible_concurrency(problem: Problem) -> int:
    """The largest |R| for which CG-BP is feasible (0 if not even one session fits)."""
    if block_capacity(problem, 1) < problem.num_blocks:
        return 0
    lo = 1
    hi = max(s.memory_bytes for s in problem.servers) // problem.session_bytes_per_block + 1
    while lo < hi:  # capacity is non-increasing in |R|
        mid = (lo + hi + 1) // 2
        if block_capacity(problem, mid) >= problem.num_blocks:
            lo = mid
        else:
            hi = mid - 1
    return lo


def infeasible_reason(problem: Problem, concurrent_requests: int) -> str:
    cap = block_capacity(problem, concurrent_requests)
    r_max = max_feasible_concurrency(problem)
    if r_max == 0:
        return (
            f"memory: even one session does not fit: the servers can hold {cap} of the "
            f"{problem.num_blocks} blocks with one session's KV cache each; add servers or memory, "
            f"or lower max_input_tokens + max_output_tokens"
        )
    return (
        f"memory: with concurrent_requests={concurrent_requests} the servers can hold only {cap} of "
        f"the {problem.num_blocks} blocks (each block needs block_bytes + "
        f"{concurrent_requests} x session KV cache); the largest concurrency that fits is {r_max}"
    )


@dataclass(frozen=True)
class GreedyResult:
    blocks: tuple[int, ...]  # m_j (0: unused)
    starts: tuple[int, ...]  # a_j (0-based; meaningless where m_j == 0)
    order: tuple[int, ...]  # servers by increasing amortised time
    amortised_s: tuple[float, ...]  # t~_j (inf where m_j == 0)
    top_k: int  # K of Theorem 2 (number of servers in `order` until all blocks are served)
    bound_per_token_s: float


def greedy_place(
    problem: Problem, concurrent_requests: int, blocks: list[int] | None = None
) -> GreedyResult | None:
    """Steps 1-2 of Algorithm 1 (CG-BP). None when some block stays under-served."""
    n_blocks, r = problem.num_blocks, concurrent_requests
    s_m, s_c = problem.model.block_bytes, problem.session_bytes_per_block
    m = conservative_blocks(problem, r) if blocks is None else list(blocks)
    t_tilde = [
        s.decode_s_per_block + farthest_rtt(problem, j) / m[j] if m[j] > 0 else math.inf
        for j, s in enumerate(problem.servers)
    ]
    usable = [j for j in range(len(m)) if m[j] > 0]
    if not usable:
        return None
    t_dummy = max(t_tilde[j] for j in usable) + 1.0
    cap_served = [0] * n_blocks  # C[b]
    amort = [r * t_dummy] * n_blocks  # T[b]
    order = sorted(usable, key=lambda j: t_tilde[j])  # stable: ties by index
    starts = [0] * len(m)
    top_k = 0
    for i, j in enumerate(order, start=1):
        mj = m[j]
        cap_j = (problem.servers[j].memory_bytes - s_m * mj) // (s_c * mj)
        if top_k == 0:
            best_a, best_sum = -1, -math.inf
            for a in range(n_blocks - mj + 1):
                if min(cap_served[a : a + mj]) >= r:
                    continue
                total = math.fsum(amort[a : a + mj])  # exact, so equal windows tie exactly
                if total > best_sum:
                    best_a, best_sum = a, total
        else:
            best_a = min(range(n_blocks - mj + 1), key=lambda a: sorted(cap_served[a : a + mj]))
        starts[j] = best_a
        gain = t_dummy - t_tilde[j]
        for b in range(best_a, best_a + mj):
            amort[b] -= gain * min(max(r - cap_served[b], 0), cap_j)
            cap_served[b] += cap_j
        if top_k == 0 and min(cap_served) >= r:
            top_k = i
    if top_k == 0:
        return None
    top = order[:top_k]
    tau_k = problem.servers[top[-1]].decode_s_per_block
    bound = sum(
        farthest_rtt(problem, j) + problem.servers[j].decode_s_per_block * m[j] for j in top
    ) - tau_k * (sum(m[j] for j in top) - n_blocks)
    return GreedyResult(tuple(m), tuple(starts), tuple(order), tuple(t_tilde), top_k, bound)


def route_clients(
    problem: Problem, placement: tuple[Placement, ...]
) -> tuple[dict[str, tuple[str, ...]], list[list[tuple[int, int]]]]:
    """Step 3: the decode-cost shortest chain of every client. Empty chain where none exists."""
    idx = {s.name: i for i, s in enumerate(problem.servers)}
    graph = build_graph(problem.num_blocks, [(idx[p.server], p.start, p.blocks) for p in placement])
    tau = np.array([problem.servers[j].decode_s_per_block for j in graph.servers])
    routes: dict[str, tuple[str, ...]] = {}
    hops_all: list[list[tuple[int, int]]] = []
    for c, client in enumerate(problem.clients):
        rtt = np.array([problem.link(c, j).rtt_s for j in graph.servers])
        _, hops = best_chain(graph, linear_costs(graph, rtt, tau))
        server_hops = [(graph.servers[row], k) for row, k in hops]
        routes[client.name] = tuple(problem.servers[j].name for j, _ in server_hops)
        hops_all.append(server_hops)
    return routes, hops_all


def placement_of(problem: Problem, g: GreedyResult) -> tuple[Placement, ...]:
    return tuple(
        Placement(s.name, g.starts[j], g.blocks[j])
        for j, s in enumerate(problem.servers)
        if g.blocks[j] > 0
    )


def solve(problem: Problem, concurrent_requests: int) -> Plan:
    g = greedy_place(problem, concurrent_requests)
    if g is None:
        return Plan(SOLVER, False, reason=infeasible_reason(problem, concurrent_requests))
    placement = placement_of(problem, g)
    routes, hops_all = route_clients(problem, placement)
    return Plan(
        SOLVER,
        True,
        placement,
        MappingProxyType(routes),
        predicted_for(problem, hops_all, g.bound_per_token_s),
        MappingProxyType({"concurrent_requests": concurrent_requests, "top_k": g.top_k}),
    )
