"""One evaluation of a placement: which ranges cover the model, and the plan that ranges and routes
amount to (predicted times from the performance model). Every caller that judges a placement
(solvers, the operator's re-plan, the simulator, pinned local plans) goes through here."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import numpy as np

from .cg_bprr import route_clients
from .model import Placement, Plan, Problem
from .paths import best_chain, build_graph, linear_costs
from .perf import chain_hops, predicted_for, requests_per_client, server_slots
from .validate import memory_violations

Ranges = Mapping[str, tuple[int, int]]  # server -> (start, end)


def covers(num_blocks: int, ranges: Iterable[tuple[int, int]]) -> bool:
    """True when the (start, end) ranges together hold every block: then some chain serves a request."""
    reach = 0
    for start, end in sorted(ranges):
        if start > reach:
            return False
        reach = max(reach, end)
    return reach >= num_blocks


def uncovered(num_blocks: int, placement: Iterable[Placement]) -> list[int]:
    """The blocks no server holds (empty when the placement covers the model)."""
    held = [False] * num_blocks
    for p in placement:
        for b in range(max(p.start, 0), min(p.end, num_blocks)):
            held[b] = True
    return [b for b, ok in enumerate(held) if not ok]


def plan_with_routes(
    problem: Problem,
    placement: tuple[Placement, ...],
    routes: Mapping[str, tuple[str, ...]],
    concurrent_requests: int,
    solver: str,
    bound_per_token_s: float | None = None,
) -> Plan:
    """The plan of a placement and one chain per client, with its predicted times."""
    placed = {p.server: p for p in placement}
    hops = [
        chain_hops(problem, placed, routes[c.name]) if routes.get(c.name) else []
        for c in problem.clients
    ]
    return Plan(
        solver,
        True,
        placement,
        MappingProxyType(dict(routes)),
        predicted_for(problem, hops, bound_per_token_s),
        MappingProxyType({"concurrent_requests": concurrent_requests}),
    )


def routes_within_memory(
    problem: Problem, placement: tuple[Placement, ...], concurrent_requests: int
) -> dict[str, tuple[str, ...]] | None:
    """The cheapest chain of each client (heaviest first) among those whose hops still have KV room
    for its sessions beside the clients routed before it; None when some client finds none."""
    idx = {s.name: i for i, s in enumerate(problem.servers)}
    graph = build_graph(problem.num_blocks, [(idx[p.server], p.start, p.blocks) for p in placement])
    blocks = {p.server: p.blocks for p in placement}
    slots = np.array(
        [server_slots(problem, j, blocks[problem.servers[j].name]) for j in graph.servers],
        dtype=np.float64,
    )
    tau = np.array([problem.servers[j].decode_s_per_block for j in graph.servers])
    sessions = requests_per_client(problem, concurrent_requests)
    order = sorted(range(len(problem.clients)), key=lambda c: (-sessions[c], c))
    routes: dict[str, tuple[str, ...]] = {}
    for c in order:
        rtt = np.array([problem.link(c, j).rtt_s for j in graph.servers])
        cost = linear_costs(graph, rtt, tau)
        cost[sessions[c] * graph.k[None, :] > slots[:, None]] = math.inf  # no room for k blocks
        _, hops = best_chain(graph, cost)
        if not hops:
            return None
        for row, k in hops:
            slots[row] -= sessions[c] * k
        routes[problem.clients[c].name] = tuple(
            problem.servers[graph.servers[r]].name for r, _ in hops
        )
    return routes


def evaluate_placement(
    problem: Problem, placement: tuple[Placement, ...], concurrent_requests: int, solver: str
) -> Plan:
    """The plan a placement amounts to: cheapest chain per client (CG-BPRR's routing) when those
    fit in memory at this concurrency, else the cheapest chains that do (`routes_within_memory`),
    with predicted times. Infeasible, with the reason, when the ranges do not cover the model.
    The caller checks the result (`validate`): neither routing may fit."""
    missing = uncovered(problem.num_blocks, placement)
    if missing:
        return Plan(
            solver,
            False,
            placement,
            reason=f"blocks {missing[0]}..{missing[-1]} are on no server",
        )
    routes, _ = route_clients(problem, placement)
    plan = plan_with_routes(problem, placement, routes, concurrent_requests, solver)
    if not memory_violations(problem, plan, concurrent_requests):
        return plan
    fitting = routes_within_memory(problem, placement, concurrent_requests)
    if fitting is None:
        return plan
    return plan_with_routes(problem, placement, fitting, concurrent_requests, solver)


def evaluate(problem: Problem, ranges: Ranges, concurrent_requests: int, solver: str) -> Plan:
    """The plan a set of deployed ranges (server -> (start, end)) amounts to; unknown servers and
    empty ranges are left out."""
    names = {s.name for s in problem.servers}
    placement = tuple(
        Placement(s, start, end - start)
        for s, (start, end) in sorted(ranges.items())
        if s in names and end > start
    )
    plan = evaluate_placement(problem, placement, concurrent_requests, solver)
    if not plan.feasible:
        return Plan(solver, False, placement, reason="the deployed stages do not cover all blocks")
    return plan
