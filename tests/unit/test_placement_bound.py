"""A bound on GPUs (`max_servers`): every solver honours it and still returns a valid plan."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.errors import InvalidInput
from tessera.placement import solve, validate
from tessera.placement.generate import random_small
from tessera.placement.subset import fastest_servers

from .placement_helpers import GB, problem

pools = st.builds(
    lambda seed, n, blocks, clients, r: random_small(random.Random(seed), n, blocks, clients, r),
    st.integers(0, 2**32 - 1),
    st.integers(2, 7),
    st.integers(1, 10),
    st.integers(1, 3),
    st.integers(1, 4),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools, st.integers(1, 7), st.sampled_from(["cg-bprr", "petals"]))
def test_every_solver_uses_at_most_max_servers(pool, bound, solver) -> None:  # type: ignore[no-untyped-def]
    plan = solve(pool, solver, max_servers=bound)
    assert validate(pool, plan) == []
    assert len(plan.placement) <= bound
    assert plan.stats["max_servers"] == bound
    if bound >= len(pool.servers):  # a bound the pool already meets changes nothing
        unbounded = solve(pool, solver)
        assert plan.placement == unbounded.placement


def test_the_bound_keeps_the_fastest_servers() -> None:
    pool = problem(
        [("slow", 12 * GB, 0.05), ("fast", 12 * GB, 0.001), ("mid", 12 * GB, 0.01)], blocks=10
    )
    assert fastest_servers(pool, 2, 2) == ("fast", "mid")
    plan = solve(pool, "cg-bprr", max_servers=2)
    assert {p.server for p in plan.placement} <= {"fast", "mid"}
    assert plan.stats["servers_used"] == len(plan.placement)


def test_a_bound_too_small_for_the_model_is_an_infeasible_plan_with_a_reason() -> None:
    pool = problem([("a", 6 * GB, 0.01), ("b", 6 * GB, 0.01)], blocks=10)
    assert solve(pool, "cg-bprr").feasible
    plan = solve(pool, "cg-bprr", max_servers=1)
    assert not plan.feasible and plan.reason and "memory" in plan.reason


@pytest.mark.parametrize("bad", [0, -3])
def test_a_bound_below_one_is_invalid_input(bad: int) -> None:
    with pytest.raises(InvalidInput):
        solve(problem([("a", 20 * GB, 0.01)]), "cg-bprr", max_servers=bad)
