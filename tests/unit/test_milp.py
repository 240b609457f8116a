"""The exact MILP: optimality on tiny problems (checked by brute force), time limits, fallback."""

from __future__ import annotations

import itertools
import math
import random

import pulp
import pytest

from tessera.placement import Placement, Plan, Problem, solve, validate
from tessera.placement.generate import random_small
from tessera.placement.perf import chain_hops, decode_s_per_token, weighted_mean
from tessera.placement.validate import memory_violations


def _chains(placed: dict[str, Placement], n_blocks: int) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []

    def extend(prefix: tuple[str, ...], end: int) -> None:
        if end == n_blocks:
            out.append(prefix)
            return
        for name, p in placed.items():
            if name not in prefix and p.start <= end <= p.end - 1:
                extend((*prefix, name), p.end)

    extend((), 0)
    return out


def brute_force_optimum(problem: Problem, concurrent: int) -> float:
    """Every placement, every chain per client: the best feasible per-token time (slow; tiny only)."""
    n_blocks = problem.num_blocks
    ranges = [None] + [(a, m) for a in range(n_blocks) for m in range(1, n_blocks - a + 1)]
    best = math.inf
    for combo in itertools.product(ranges, repeat=len(problem.servers)):
        placed = {
            s.name: Placement(s.name, r[0], r[1])
            for s, r in zip(problem.servers, combo, strict=True)
            if r is not None
        }
        chains = _chains(placed, n_blocks)
        if not chains:
            continue
        for routes in itertools.product(chains, repeat=len(problem.clients)):
            plan = Plan(
                "bf",
                True,
                tuple(placed.values()),
                {c.name: r for c, r in zip(problem.clients, routes, strict=True)},
                None,
                {},
            )
            if memory_violations(problem, plan, concurrent):
                continue
            hops = [chain_hops(problem, placed, r) for r in routes]
            best = min(
                best,
                weighted_mean(
                    problem, [decode_s_per_token(problem, c, h) for c, h in enumerate(hops)]
                ),
            )
    return best


@pytest.mark.parametrize("seed", range(4))
def test_milp_is_optimal_on_tiny_problems(seed: int) -> None:
    p = random_small(random.Random(seed), servers=3, blocks=3, clients=1, concurrent_requests=2)
    plan = solve(p, "milp", time_limit_s=30)
    optimum = brute_force_optimum(p, 2)
    if not math.isfinite(optimum):
        assert not plan.feasible
        return
    assert plan.feasible and validate(p, plan) == []
    assert plan.stats["proven_optimal"] is True
    assert plan.predicted is not None
    assert plan.predicted.per_token_s == pytest.approx(optimum, rel=1e-6)
    cg = solve(p, "cg-bprr")
    if cg.feasible and cg.predicted is not None:
        assert plan.predicted.per_token_s <= cg.predicted.per_token_s + 1e-9


def test_no_incumbent_falls_back_to_cg_bprr_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    p = random_small(random.Random(1), servers=3, blocks=3, clients=1, concurrent_requests=2)

    def never_solves(self: pulp.LpProblem, solver: object = None, **kw: object) -> int:
        self.status, self.sol_status = pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound
        return self.status

    monkeypatch.setattr(pulp.LpProblem, "solve", never_solves)
    plan = solve(p, "milp", time_limit_s=1)
    cg = solve(p, "cg-bprr")
    assert plan.feasible == cg.feasible
    if plan.feasible:
        assert plan.solver == "milp"
        assert plan.stats["proven_optimal"] is False
        assert "fallback" in plan.stats and "no MILP incumbent" in plan.stats["fallback"]
        assert plan.placement == cg.placement


def test_time_limit_must_be_positive() -> None:
    p = random_small(random.Random(1), servers=2, blocks=2, clients=1, concurrent_requests=1)
    from tessera.errors import InvalidInput

    with pytest.raises(InvalidInput, match="time_limit"):
        solve(p, "milp", time_limit_s=0)
