"""Full replicas: when one server can serve the whole model by itself (e.g. with vLLM).

A full replica holds every block; it is worth running as one engine (one hop, its own batching)
only if it also has KV room for its share of the declared concurrency. Pure values in and out.
"""

from __future__ import annotations

import math

from .model import Plan, Problem


def replica_sessions(problem: Problem, server: str) -> int:
    """Full-length sessions (max input plus output tokens) `server` holds beside all the weights;
    0 when the weights alone do not fit."""
    memory = problem.servers[problem.server_index(server)].memory_bytes
    weights = problem.model.block_bytes * problem.num_blocks
    per_session = problem.session_bytes_per_block * problem.num_blocks
    if weights > memory or per_session <= 0:
        return 0
    return (memory - weights) // per_session


def replica_kv_pages(problem: Problem, server: str, page_tokens: int) -> int:
    """KV pages of `page_tokens` tokens of ONE block that `server` holds beside all the weights
    (the router's slot unit): the plan's cap on a full replica's load."""
    memory = problem.servers[problem.server_index(server)].memory_bytes
    weights = problem.model.block_bytes * problem.num_blocks
    per_page = problem.model.cache_bytes_per_token * page_tokens
    if weights > memory or per_page <= 0:
        return 0
    return (memory - weights) // per_page


def _whole(problem: Problem, plan: Plan) -> list[str]:
    return [p.server for p in plan.placement if p.start == 0 and p.end == problem.num_blocks]


def replica_share(problem: Problem, plan: Plan) -> int:
    """Concurrent requests a full replica of `plan` is meant to take: the declared concurrency
    split evenly over the plan's independent ways to serve a request (each full-range server,
    plus one for the split chains if any server holds only part of the model), rounded up;
    at least one."""
    whole = _whole(problem, plan)
    declared = problem.workload.concurrent_requests or 1
    return share_of(declared, len(whole), split=len(whole) < len(plan.placement))


def share_of(concurrent_requests: int, replicas: int, *, split: bool) -> int:
    """Each replica's share of `concurrent_requests` (see `replica_share`)."""
    ways = replicas + (1 if split else 0)
    return max(1, math.ceil(concurrent_requests / max(ways, 1)))


def split_concurrency(concurrent_requests: int, replicas: int) -> int:
    """What the split chains must carry beside `replicas` full replicas: the rest."""
    share = share_of(concurrent_requests, replicas, split=True)
    return max(1, concurrent_requests - share * replicas)


def full_replicas(problem: Problem, plan: Plan) -> tuple[str, ...]:
    """Servers of `plan` that hold every block with room for their share of the concurrency."""
    share = replica_share(problem, plan)
    return tuple(s for s in _whole(problem, plan) if replica_sessions(problem, s) >= share)


def pp_layer_partition(problem: Problem, plan: Plan, chain: tuple[str, ...]) -> str:
    """`VLLM_PP_LAYER_PARTITION` for running `chain` of `plan` as ONE vLLM pipeline
    (`--pipeline-parallel-size len(chain)`): the blocks each hop processes, from the previous
    hop's end to its own (overlapping ranges are cut the way the router cuts them). Raises
    ValueError if the chain does not cover every block in order."""
    ends = {p.server: p for p in plan.placement}
    counts, prev = [], 0
    for name in chain:
        p = ends.get(name)
        if p is None or not p.start <= prev < p.end:
            raise ValueError(f"{name} does not continue the chain at block {prev}")
        counts.append(p.end - prev)
        prev = p.end
    if prev != problem.num_blocks:
        raise ValueError(f"the chain ends at block {prev}, not {problem.num_blocks}")
    return ",".join(str(c) for c in counts)
