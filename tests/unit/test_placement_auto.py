"""`auto`: valid, never worse than CG-BPRR, the exact optimum on tiny pools, honours the bound."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.placement import (
    REGISTRY,
    Client,
    Limits,
    Placement,
    Plan,
    Problem,
    Solver,
    solve,
    validate,
)
from tessera.placement.evaluate import evaluate, evaluate_placement, plan_with_routes
from tessera.placement.generate import random_pool, random_small
from tessera.placement.replan import decide, ranges_of
from tessera.placement.validate import memory_violations

from .placement_helpers import GB, problem

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pools = st.builds(
    lambda seed, n, blocks, clients, r: random_small(random.Random(seed), n, blocks, clients, r),
    st.integers(0, 2**32 - 1),
    st.integers(1, 9),
    st.integers(1, 12),
    st.integers(1, 3),
    st.integers(1, 6),
)


def _per_token(plan: Plan) -> float:
    return plan.predicted.per_token_s if plan.feasible and plan.predicted else math.inf


@SETTINGS
@given(pools, st.one_of(st.none(), st.integers(1, 9)))
def test_auto_is_valid_and_never_worse_than_cg_bprr(pool, bound) -> None:  # type: ignore[no-untyped-def]
    plan = solve(pool, "auto", time_limit_s=5, max_servers=bound)
    cg = solve(pool, "cg-bprr", max_servers=bound)
    assert validate(pool, plan) == []
    assert plan.solver == "auto"
    if cg.feasible:
        assert plan.feasible
        assert _per_token(plan) <= _per_token(cg) * (1 + 1e-12)
        assert plan.stats["cg_bprr_per_token_s"] == _per_token(cg)
        assert plan.predicted.bound_per_token_s == cg.predicted.bound_per_token_s
    if bound is not None:
        assert len(plan.placement) <= bound


def _chains(problem: Problem, placement: tuple[Placement, ...]) -> list[tuple[str, ...]]:
    """Every chain over a placement (brute force)."""
    out: list[tuple[str, ...]] = []

    def grow(chain: tuple[str, ...], end: int) -> None:
        if end == problem.num_blocks:
            out.append(chain)
            return
        for p in placement:
            if p.server not in chain and p.start <= end < p.end:
                grow((*chain, p.server), p.end)

    grow((), 0)
    return out


def brute_force_optimum(problem: Problem) -> float:
    """The least per-token time over every placement and every chain per client that fits memory."""
    r = problem.workload.concurrent_requests or 1
    options: list[list[Placement | None]] = []
    for s in problem.servers:
        ranges: list[Placement | None] = [None]
        ranges += [
            Placement(s.name, a, m)
            for m in range(1, problem.num_blocks + 1)
            for a in range(problem.num_blocks - m + 1)
        ]
        options.append(ranges)
    best = math.inf
    for combo in itertools.product(*options):
        placement = tuple(p for p in combo if p is not None)
        chains = _chains(problem, placement)
        for routes in itertools.product(chains, repeat=len(problem.clients)):
            named = {c.name: ch for c, ch in zip(problem.clients, routes, strict=True)}
            plan = plan_with_routes(problem, placement, named, r, "brute")
            if not validate(problem, plan):
                best = min(best, _per_token(plan))
    return best


tiny = st.builds(
    lambda seed, n, blocks, clients, r: random_small(random.Random(seed), n, blocks, clients, r),
    st.integers(0, 2**32 - 1),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 2),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny)
def test_auto_finds_the_brute_force_optimum_on_tiny_pools(pool) -> None:  # type: ignore[no-untyped-def]
    # Equal weights and |R| a multiple of the clients: then the MILP's objective is the plan's.
    n_clients = len(pool.clients)
    clients = tuple(Client(c.name, 1.0) for c in pool.clients)
    r = n_clients * (pool.workload.concurrent_requests or 1)
    workload = dataclasses.replace(pool.workload, concurrent_requests=r)
    pool = Problem(pool.model, workload, pool.servers, clients, pool.links)
    optimum = brute_force_optimum(pool)
    plan = solve(pool, "auto", time_limit_s=20)
    assert validate(pool, plan) == []
    assert math.isclose(_per_token(plan), optimum, rel_tol=1e-9) or _per_token(plan) == optimum
    assert plan.statistics.proven_optimal == math.isfinite(optimum)


def test_auto_beats_cg_bprr_on_a_pool_with_two_clients() -> None:
    pool = random_pool(random.Random(100), 100)
    auto, cg = solve(pool, "auto", time_limit_s=10), solve(pool, "cg-bprr")
    assert _per_token(auto) < _per_token(cg)
    stats = auto.statistics
    assert stats.chosen != "cg-bprr" and stats.cg_bprr_per_token_s == _per_token(cg)
    assert not stats.proven_optimal  # no MILP on 100 servers: nothing is proven
    assert stats.servers_used == len(auto.placement)


def test_auto_under_a_bound_on_a_large_pool_uses_at_most_that_many_gpus() -> None:
    pool = random_pool(random.Random(7), 200)
    bounded = solve(pool, "auto", time_limit_s=10, max_servers=12)
    cg = solve(pool, "cg-bprr", max_servers=12)
    assert validate(pool, bounded) == [] and len(bounded.placement) <= 12
    assert _per_token(bounded) <= _per_token(cg)


def test_every_solver_in_the_registry_meets_the_protocol() -> None:
    pool = random_small(random.Random(3), 4, 6, 2, 2)
    limits = Limits(deadline_s=time.perf_counter() + 10)
    for name, solver in REGISTRY.items():
        assert isinstance(solver, Solver) and solver.name == name
        plan = solver.solve(pool, 2, limits)
        assert plan.feasible == solve(pool, name, time_limit_s=10).feasible


def test_one_client_is_proven_optimal_by_the_chain_search_without_the_milp() -> None:
    pool = random_pool(random.Random(11), 40, clients=1)
    plan = solve(pool, "auto", time_limit_s=10)
    cg = solve(pool, "cg-bprr")
    assert plan.statistics.proven_optimal and plan.statistics.milp_status is None
    assert _per_token(plan) <= _per_token(cg)
    # Tiny single-client pools go the same way, where the brute force can confirm it.
    tiny_pool = random_small(random.Random(5), 3, 3, 1, 2)
    if solve(tiny_pool, "cg-bprr").feasible:
        tiny_plan = solve(tiny_pool, "auto", time_limit_s=10)
        assert tiny_plan.statistics.proven_optimal
        assert math.isclose(_per_token(tiny_plan), brute_force_optimum(tiny_pool), rel_tol=1e-9)


def test_a_spent_time_limit_returns_the_floor_it_always_computes_first() -> None:
    pool = random_pool(random.Random(100), 100)
    hurried = solve(pool, "auto", time_limit_s=1e-9)
    cg = solve(pool, "cg-bprr")
    assert validate(pool, hurried) == []
    assert hurried.statistics.chosen == "cg-bprr" and hurried.stats["candidates_tried"] == 1
    assert hurried.placement == cg.placement
    assert _per_token(solve(pool, "auto", time_limit_s=10)) < _per_token(hurried)


def test_on_a_tie_auto_keeps_shorter_idle_chains_on_its_spare_servers() -> None:
    # Six equal 8 GB servers, 10 blocks, |R| = 20: each holds 4 blocks for 20 sessions, so every
    # plan's chain has 3 hops. Spare servers sized for 10 sessions hold 5: an idle 2-hop chain.
    pool = problem([(f"s{i}", 8 * GB, 0.01) for i in range(6)], blocks=10, concurrent=20)
    auto, cg = solve(pool, "auto", time_limit_s=10), solve(pool, "cg-bprr")
    assert validate(pool, auto) == []
    assert math.isclose(_per_token(auto), _per_token(cg), rel_tol=1e-9)
    idle_auto = evaluate_placement(pool, auto.placement, 0, "x")
    idle_cg = evaluate_placement(pool, cg.placement, 0, "x")
    assert _per_token(idle_auto) < _per_token(idle_cg)
    assert "spare" in (auto.statistics.chosen or "")


def test_an_auto_plan_evaluated_from_its_ranges_alone_is_still_valid() -> None:
    # What the operator does with a deployed plan: re-route from the ranges. The idle shortest
    # chain (through the spare servers) has no room for all |R|; the evaluation finds one that has.
    pool = problem([(f"s{i}", 8 * GB, 0.01) for i in range(6)], blocks=10, concurrent=20)
    plan = solve(pool, "auto", time_limit_s=10)
    shortest = evaluate_placement(pool, plan.placement, 0, "x")
    assert memory_violations(pool, shortest, 20)
    again = evaluate(pool, ranges_of(plan), 20, "auto (deployed)")
    assert validate(pool, again) == []
    assert math.isclose(_per_token(again), _per_token(plan), rel_tol=1e-9)
    # So a fresh plan that is no faster does not move it (it did while the evaluation ignored memory).
    kept = decide(pool, ranges_of(plan), solve(pool, "cg-bprr"), 0.1)
    assert kept.moved is False and kept.reason.startswith("kept")
