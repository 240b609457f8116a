"""One evaluation of a placement: which ranges cover the model, and the plan that ranges and routes
amount to (predicted times from the performance model). Every caller that judges a placement
(solvers, the operator's re-plan, the simulator, pinned local plans) goes through here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from .cg_bprr import route_clients
from .model import Placement, Plan, Problem
from .perf import chain_hops, predicted_for

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


def evaluate_placement(
    problem: Problem, placement: tuple[Placement, ...], concurrent_requests: int, solver: str
) -> Plan:
    """The plan a placement amounts to: cheapest chain per client (CG-BPRR's routing), predicted
    times. Infeasible, with the reason, when the ranges do not cover the model. Memory is the
    caller's to check (`validate`), at whatever concurrency it serves."""
    missing = uncovered(problem.num_blocks, placement)
    if missing:
        return Plan(
            solver,
            False,
            placement,
            reason=f"blocks {missing[0]}..{missing[-1]} are on no server",
        )
    routes, _ = route_clients(problem, placement)
    return plan_with_routes(problem, placement, routes, concurrent_requests, solver)


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
