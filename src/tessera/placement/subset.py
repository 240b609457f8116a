"""Sub-pools: the problem restricted to some servers, and the documented choice of the fastest ones.

A plan for a restricted problem is a plan for the whole pool (the other servers hold no blocks),
so a bound on GPUs is honoured by solving on a sub-pool.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import Problem
from .perf import farthest_rtt


def restrict(problem: Problem, servers: Iterable[str]) -> Problem:
    """The problem with only these servers (the clients, model and workload unchanged)."""
    keep = set(servers)
    return Problem(
        problem.model,
        problem.workload,
        tuple(s for s in problem.servers if s.name in keep),
        problem.clients,
        tuple(lk for lk in problem.links if lk.server in keep),
    )


def amortised_s_per_block(problem: Problem, concurrent_requests: int) -> list[float]:
    """CG-BPRR's t~_j = tau_j + t*_j / m_j with its conservative m_j (inf for a server that holds none)."""
    per_block = problem.model.block_bytes + problem.session_bytes_per_block * concurrent_requests
    out = []
    for j, s in enumerate(problem.servers):
        m = min(s.memory_bytes // per_block, problem.num_blocks)
        out.append(s.decode_s_per_block + farthest_rtt(problem, j) / m if m > 0 else float("inf"))
    return out


def fastest_servers(problem: Problem, concurrent_requests: int, count: int) -> tuple[str, ...]:
    """The `count` servers of least amortised per-block time at this concurrency (ties by pool order):
    the subset every solver but `auto` uses under a bound on GPUs."""
    t = amortised_s_per_block(problem, concurrent_requests)
    order = sorted(range(len(problem.servers)), key=lambda j: (t[j], j))
    return tuple(problem.servers[j].name for j in order[:count])
