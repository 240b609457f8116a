"""WS-RR online routing as a pure function."""

from __future__ import annotations

import math

import pytest

from tessera.placement import Placement, Plan, solve
from tessera.placement.routing import ServerLoad, chain_blocks, routing_table, wait_for_slots, ws_rr

from .placement_helpers import GB, problem


def test_wait_for_slots() -> None:
    load = ServerLoad(free_slots=2, sessions=((5.0, 3), (1.0, 1), (3.0, 4)))
    assert wait_for_slots(load, 2) == 0.0
    assert wait_for_slots(load, 3) == 1.0  # the session finishing at 1 s frees one slot
    assert wait_for_slots(load, 4) == 3.0
    assert wait_for_slots(load, 7) == 3.0
    assert wait_for_slots(load, 8) == 5.0
    assert wait_for_slots(load, 11) == math.inf


def two_replicas() -> tuple[Plan, object]:
    # Two full replicas; "a" is a little faster, so an idle pool routes to it.
    p = problem([("a", 11 * GB, 0.010), ("b", 11 * GB, 0.011)], concurrent=1)
    plan = Plan(
        "hand",
        True,
        (Placement("a", 0, 10), Placement("b", 0, 10)),
        {"c0": ("a",)},
        None,
        {"concurrent_requests": 1},
    )
    return plan, p


def test_idle_pool_takes_the_cheapest_chain_and_cost_is_the_service_time() -> None:
    plan, p = two_replicas()
    table = routing_table(p, plan)  # type: ignore[arg-type]
    choice = ws_rr(table, 0, {})
    assert choice is not None
    assert choice.chain == ("a",) and choice.blocks == (10,) and choice.wait_s == 0.0
    # prefill: link 0.02 + 10 * (1e-5 * 10 + 0.001); decode: 39 * (0.01 + 10 * 0.01)
    assert choice.service_s == pytest.approx(0.02 + 10 * (1e-4 + 0.001) + 39 * (0.01 + 0.1))
    assert choice.cost_s == pytest.approx(choice.service_s)


def test_busy_server_is_avoided_when_waiting_costs_more() -> None:
    plan, p = two_replicas()
    table = routing_table(p, plan)  # type: ignore[arg-type]
    busy = {"a": ServerLoad(free_slots=0, sessions=((30.0, 10),))}
    choice = ws_rr(table, 0, busy)
    assert choice is not None and choice.chain == ("b",) and choice.wait_s == 0.0
    # When both are full the one that frees first wins, and the wait is reported.
    both = {"a": ServerLoad(0, ((30.0, 10),)), "b": ServerLoad(0, ((50.0, 10),))}
    choice = ws_rr(table, 0, both)
    assert choice is not None and choice.chain == ("a",) and choice.wait_s == 30.0
    assert choice.cost_s == pytest.approx(30.0 + choice.service_s)


def test_excluded_servers_are_not_used_and_no_chain_is_none() -> None:
    plan, p = two_replicas()
    table = routing_table(p, plan)  # type: ignore[arg-type]
    choice = ws_rr(table, 0, {}, exclude={"a"})
    assert choice is not None and choice.chain == ("b",)
    assert ws_rr(table, 0, {}, exclude={"a", "b"}) is None
    # A server that can never hold the request (too few slots in total) is skipped too.
    assert ws_rr(table, 0, {"a": ServerLoad(0, ()), "b": ServerLoad(0, ())}) is None


def test_ws_rr_matches_the_plans_chain_on_an_idle_pool() -> None:
    p = problem([("slow", 7 * GB, 0.05), ("fast", 7 * GB, 0.01)], concurrent=1)
    plan = solve(p)
    table = routing_table(p, plan)
    choice = ws_rr(table, 0, {})
    assert choice is not None and choice.chain == plan.routes["c0"]
    assert chain_blocks(table, choice.chain) == choice.blocks == (6, 4)
