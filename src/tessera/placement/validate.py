"""An independent checker of any plan against a problem.

It recomputes everything from the problem and the plan's own placement and routes (it shares no
code with the solvers but the performance model), so tests use it as the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tessera.errors import InvalidInput

from .model import Placement, Plan, Problem
from .perf import (
    chain_hops,
    decode_s_per_token,
    first_token_s,
    memory_bytes,
    requests_per_client,
    weighted_mean,
)

REL_TOL = 1e-6


def _structure(problem: Problem, plan: Plan) -> list[str]:
    errors: list[str] = []
    names = {s.name for s in problem.servers}
    seen: set[str] = set()
    n_blocks = problem.num_blocks
    for p in plan.placement:
        if p.server not in names:
            errors.append(f"placement: unknown server {p.server!r}")
            continue
        if p.server in seen:
            errors.append(f"placement: server {p.server!r} listed twice")
        seen.add(p.server)
        if p.start < 0 or p.blocks < 1 or p.end > n_blocks:
            errors.append(
                f"placement: {p.server} range [{p.start}, {p.end}) is outside [0, {n_blocks})"
            )
        mem = problem.servers[problem.server_index(p.server)].memory_bytes
        if problem.model.block_bytes * p.blocks > mem:
            errors.append(f"memory: {p.server} cannot hold the weights of {p.blocks} blocks")
    return errors


def _routes(problem: Problem, plan: Plan, placed: Mapping[str, Placement]) -> list[str]:
    errors: list[str] = []
    for client in problem.clients:
        chain = plan.routes.get(client.name)
        if not chain:
            errors.append(f"routes: client {client.name!r} has no chain")
            continue
        prev_end = 0
        for name in chain:
            p = placed.get(name)
            if p is None:
                errors.append(f"routes: {client.name} uses {name!r}, which holds no blocks")
                break
            if not p.start <= prev_end <= p.end - 1:
                errors.append(
                    f"routes: {client.name} goes to {name} [{p.start}, {p.end}) after block {prev_end - 1}; "
                    f"it must hold block {prev_end}"
                )
                break
            prev_end = p.end
        else:
            if prev_end != problem.num_blocks:
                errors.append(
                    f"routes: {client.name}'s chain ends at block {prev_end - 1}, not the last block"
                )
    for extra in set(plan.routes) - {c.name for c in problem.clients}:
        errors.append(f"routes: unknown client {extra!r}")
    return errors


def block_sessions(problem: Problem, plan: Plan, concurrent_requests: int) -> dict[str, int]:
    """(block, session) KV caches each server holds with |R| sessions spread over clients by weight."""
    placed = {p.server: p for p in plan.placement}
    load = {p.server: 0 for p in plan.placement}
    for c, n in enumerate(requests_per_client(problem, concurrent_requests)):
        chain = plan.routes.get(problem.clients[c].name, ())
        for j, k in chain_hops(problem, placed, chain):
            load[problem.servers[j].name] += n * k
    return load


def memory_violations(problem: Problem, plan: Plan, concurrent_requests: int) -> list[str]:
    errors = []
    held = {p.server: p.blocks for p in plan.placement}
    for name, sessions in block_sessions(problem, plan, concurrent_requests).items():
        server = problem.servers[problem.server_index(name)]
        blocks = held[name]
        need = memory_bytes(problem, blocks, sessions)
        if need > server.memory_bytes:
            errors.append(
                f"memory: {name} needs {need} bytes for {blocks} blocks and {sessions} block-sessions "
                f"at {concurrent_requests} concurrent requests, but has {server.memory_bytes}"
            )
    return errors


def supported_concurrency(problem: Problem, plan: Plan, limit: int) -> int:
    """The largest |R| <= limit at which the plan's routes fit in memory (0 if none)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if memory_violations(problem, plan, mid):
            hi = mid - 1
        else:
            lo = mid
    return lo


def validate(problem: Problem, plan: Plan) -> list[str]:
    """Every way the plan breaks the problem's rules; empty when it is valid."""
    if not plan.feasible:
        return [] if plan.reason else ["an infeasible plan must say why (reason)"]
    errors = _structure(problem, plan)
    if errors:
        return errors
    placed = {p.server: p for p in plan.placement}
    errors = _routes(problem, plan, placed)
    if errors:
        return errors
    concurrency = plan.statistics.concurrent_requests
    if concurrency is None or concurrency < 0:
        return ["stats.concurrent_requests: the plan must say which concurrency it was built for"]
    errors += memory_violations(problem, plan, concurrency)
    hops = [chain_hops(problem, placed, plan.routes[c.name]) for c in problem.clients]
    per_token = weighted_mean(
        problem, [decode_s_per_token(problem, c, h) for c, h in enumerate(hops)]
    )
    first = weighted_mean(problem, [first_token_s(problem, c, h) for c, h in enumerate(hops)])
    if plan.predicted is None:
        errors.append("predicted: missing")
    else:
        if not math.isclose(plan.predicted.per_token_s, per_token, rel_tol=REL_TOL):
            errors.append(
                f"predicted.per_token_s: {plan.predicted.per_token_s} but the routes give {per_token}"
            )
        if not math.isclose(plan.predicted.first_token_s, first, rel_tol=REL_TOL):
            errors.append(
                f"predicted.first_token_s: {plan.predicted.first_token_s} but the routes give {first}"
            )
    return errors


def check(problem: Problem, plan: Plan) -> None:
    """Raise InvalidInput listing the violations (for plans read from files)."""
    errors = validate(problem, plan)
    if errors:
        raise InvalidInput("plan", "; ".join(errors))
