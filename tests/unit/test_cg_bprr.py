"""CG-BPRR (Algorithm 1) on hand-made problems."""

from __future__ import annotations

import math

import pytest

from tessera.placement import solve, validate
from tessera.placement.cg_bprr import (
    block_capacity,
    conservative_blocks,
    greedy_place,
    max_feasible_concurrency,
)
from tessera.placement.solve import choose_concurrency

from .placement_helpers import GB, problem


def test_conservative_block_count_leaves_room_for_every_session() -> None:
    # s_c = 1 MB/token * 50 tokens = 50 MB; with |R| = 2 each block needs 1.1 GB.
    p = problem([("big", 11 * GB, 0.01), ("small", 3 * GB, 0.02)], concurrent=2)
    assert conservative_blocks(p, 2) == [10, 2]
    assert conservative_blocks(p, 20) == [5, 1]


def test_fastest_server_takes_the_first_blocks_and_chain_is_contiguous() -> None:
    p = problem([("slow", 7 * GB, 0.05), ("fast", 7 * GB, 0.01)], concurrent=1)
    plan = solve(p)
    assert validate(p, plan) == []
    placed = {x.server: (x.start, x.blocks) for x in plan.placement}
    # fast joins first (smaller amortised time) and takes window [0, 6); slow is right-aligned.
    assert placed == {"fast": (0, 6), "slow": (4, 6)}
    assert plan.routes["c0"] == ("fast", "slow")
    # fast does 6 blocks, slow the remaining 4: rtt 0.01 each hop.
    assert plan.predicted is not None
    assert plan.predicted.per_token_s == pytest.approx(0.01 + 0.01 * 6 + 0.01 + 0.05 * 4)


def test_theorem_2_bound() -> None:
    p = problem([("slow", 7 * GB, 0.05), ("fast", 7 * GB, 0.01)], concurrent=1)
    g = greedy_place(p, 1)
    assert g is not None and g.top_k == 2
    # sum_{j<=K} (t*_j + tau_j m_j) - tau_K (sum m_j - L) = (0.01+0.06) + (0.01+0.30) - 0.05*(12-10)
    assert g.bound_per_token_s == pytest.approx(0.07 + 0.31 - 0.1)
    plan = solve(p)
    assert plan.predicted is not None and plan.predicted.per_token_s <= g.bound_per_token_s + 1e-12


def test_router_prefers_near_server_per_client() -> None:
    rtts = {
        ("near-a", "a"): 0.001,
        ("near-a", "b"): 0.2,
        ("near-b", "a"): 0.2,
        ("near-b", "b"): 0.001,
    }
    p = problem(
        [("a", 11 * GB, 0.01), ("b", 11 * GB, 0.01)],
        rtts,
        concurrent=1,
        clients=("near-a", "near-b"),
    )
    plan = solve(p)
    assert plan.routes["near-a"] == ("a",)
    assert plan.routes["near-b"] == ("b",)
    assert validate(p, plan) == []


def test_infeasible_names_constraint_and_largest_concurrency() -> None:
    p = problem([("a", 6 * GB, 0.01), ("b", 6 * GB, 0.01)], concurrent=30)
    assert block_capacity(p, 30) < 10
    r_max = max_feasible_concurrency(p)
    assert block_capacity(p, r_max) >= 10 > block_capacity(p, r_max + 1)
    plan = solve(p)
    assert not plan.feasible
    assert plan.reason is not None
    assert "memory" in plan.reason and f"largest concurrency that fits is {r_max}" in plan.reason


def test_not_even_one_session() -> None:
    p = problem([("a", 2 * GB, 0.01)], concurrent=1)
    plan = solve(p)
    assert not plan.feasible and plan.reason is not None and "even one session" in plan.reason


def test_concurrency_from_arrival_rate_is_mean_plus_one_sd_capped() -> None:
    p = problem([("a", 11 * GB, 0.01), ("b", 11 * GB, 0.01)], concurrent=None, arrival_rate=2.0)
    r, how = choose_concurrency(p)
    single = solve(p.with_concurrency(1))
    assert single.predicted is not None
    t1 = single.predicted.first_token_s + 39 * single.predicted.per_token_s
    want = math.floor(2.0 * t1 + math.sqrt(2.0 * t1) + 0.5)
    assert r == min(want, max_feasible_concurrency(p))
    assert how.startswith("auto")
    plan = solve(p)
    assert plan.stats["concurrent_requests"] == r
    # A huge rate is capped by the feasibility limit.
    big = problem([("a", 11 * GB, 0.01)], concurrent=None, arrival_rate=1e6)
    assert choose_concurrency(big)[0] == max_feasible_concurrency(big)
