"""Property tests on random small heterogeneous problems, with the plan checker as the oracle."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.placement import solve, validate
from tessera.placement.cg_bprr import block_capacity
from tessera.placement.generate import random_small
from tessera.placement.perf import chain_hops, decode_s_per_token

problems = st.builds(
    lambda seed, n, blocks, clients, r: random_small(random.Random(seed), n, blocks, clients, r),
    st.integers(0, 2**32 - 1),
    st.integers(1, 6),
    st.integers(1, 12),
    st.integers(1, 3),
    st.integers(1, 6),
)
tiny = st.builds(
    lambda seed, n, blocks, clients, r: random_small(random.Random(seed), n, blocks, clients, r),
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 2),
    st.integers(1, 3),
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(problems)
def test_cg_bprr_plans_are_valid_feasible_iff_corollary_1_and_within_the_bound(problem) -> None:  # type: ignore[no-untyped-def]
    r = problem.workload.concurrent_requests
    plan = solve(problem, "cg-bprr")
    assert validate(problem, plan) == []
    assert plan.feasible == (block_capacity(problem, r) >= problem.num_blocks)
    if not plan.feasible:
        assert plan.reason and "memory" in plan.reason
        return
    bound = plan.predicted.bound_per_token_s
    placed = {p.server: p for p in plan.placement}
    # Theorem 2 holds for every client's chain, not only on average.
    for c, client in enumerate(problem.clients):
        cost = decode_s_per_token(problem, c, chain_hops(problem, placed, plan.routes[client.name]))
        assert cost <= bound * (1 + 1e-9)


@FAST
@given(problems, st.integers(0, 3))
def test_petals_plans_are_valid(problem, seed) -> None:  # type: ignore[no-untyped-def]
    plan = solve(problem, "petals", seed=seed)
    assert validate(problem, plan) == []
    if plan.feasible:
        assert 0 <= plan.stats["concurrent_requests"] <= problem.workload.concurrent_requests


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny)
def test_proven_optimal_milp_is_never_worse(problem) -> None:  # type: ignore[no-untyped-def]
    r = problem.workload.concurrent_requests
    plan = solve(problem, "milp", time_limit_s=20)
    assert validate(problem, plan) == []
    cg = solve(problem, "cg-bprr")
    if cg.feasible:
        assert plan.feasible  # CG-BPRR's plan is a feasible point of the MILP
    if not plan.stats["proven_optimal"]:
        return
    for other in (cg, solve(problem, "petals")):
        if other.feasible and other.stats["concurrent_requests"] >= r:
            assert plan.predicted.per_token_s <= other.predicted.per_token_s * (1 + 1e-9)
