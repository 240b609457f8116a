"""Re-planning with hysteresis and a rollout that keeps a complete chain (tessera.operator.rollout)."""

from __future__ import annotations

import itertools
import random

from tessera.operator import inventory, rollout
from tessera.placement import solve

from .k8s_samples import node, spec

A100, H100, L40S = "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L40S"


def test_covers() -> None:
    assert rollout.covers(10, [(0, 4), (4, 10)])
    assert rollout.covers(10, [(0, 6), (3, 10), (5, 7)])
    assert not rollout.covers(10, [(0, 4), (5, 10)])
    assert not rollout.covers(10, [(0, 9)])
    assert not rollout.covers(10, [])


def test_start_new_then_remove_old() -> None:
    deployed = {"a": (0, 10)}
    target = {"b": (0, 6), "c": (6, 10)}
    step = rollout.rollout_step(10, deployed, {"a"}, target)
    assert step == rollout.Step(("b", "c"), ())  # a stays until b and c are ready
    step = rollout.rollout_step(10, {**deployed, **target}, {"a", "b"}, target)
    assert step.delete == ()
    step = rollout.rollout_step(10, {**deployed, **target}, {"a", "b", "c"}, target)
    assert step.delete == ("a",)


def test_changed_range_waits_until_others_cover_it() -> None:
    deployed = {"a": (0, 6), "b": (4, 10), "c": (0, 10)}
    target = {"a": (0, 5), "b": (5, 10), "c": (0, 10)}
    # With c ready, a and b can both change; without c, only one at a time.
    assert rollout.rollout_step(10, deployed, {"a", "b", "c"}, target).apply == ("a", "b")
    step = rollout.rollout_step(10, deployed, {"a", "b"}, target)
    assert step.apply == ()
    assert not rollout.rollout_safe(10, {"a": (0, 6), "b": (6, 10)}, {"a": (0, 4), "b": (4, 10)})


def test_broken_deployment_is_replaced_at_once() -> None:
    step = rollout.rollout_step(
        10, {"a": (0, 5), "gone": (5, 10)}, {"a"}, {"a": (0, 3), "b": (3, 10)}
    )
    assert step == rollout.Step(("a", "b"), ("gone",))


def test_random_rollouts_never_lose_coverage() -> None:
    rng = random.Random(5)
    servers = [f"s{i}" for i in range(6)]
    for _ in range(300):

        def ranges() -> dict[str, tuple[int, int]]:
            out = {}
            for s in rng.sample(servers, rng.randint(1, 5)):
                a = rng.randint(0, 11)
                out[s] = (a, rng.randint(a + 1, 12))
            return out

        deployed, target = ranges(), ranges()
        if not rollout.covers(12, deployed.values()) or not rollout.covers(12, target.values()):
            continue
        if not rollout.rollout_safe(12, deployed, target):
            continue
        state = dict(deployed)
        ready = set(state)
        for _ in range(50):
            if state == target:
                break
            step = rollout.rollout_step(12, state, ready, target)
            for s in step.delete:
                del state[s]
            for s in step.apply:
                state[s] = target[s]
            # Before anything new is ready, the ready stages must still cover every block.
            ready = {s for s in ready if s in state and s not in step.apply}
            assert rollout.covers(12, (state[s] for s in ready))
            ready = set(state)
        assert state == target


def _inv(nodes):  # type: ignore[no-untyped-def]
    return inventory.build(spec(), nodes)


def test_decide_keeps_a_valid_deployment_when_the_gain_is_small() -> None:
    inv = _inv([node("a1", A100), node("a2", A100)])
    plan = solve(inv.problem)
    deployed = rollout.ranges_of(plan)
    inv2 = _inv([node("a1", A100), node("a2", A100), node("h1", H100)])
    fresh = solve(inv2.problem)
    kept = rollout.decide(inv2.problem, deployed, fresh, threshold=1.0)
    assert not kept.moved and rollout.ranges_of(kept.target) == deployed and "kept" in kept.reason
    moved = rollout.decide(inv2.problem, deployed, fresh, threshold=0.0)
    assert fresh.predicted and kept.target.predicted
    if fresh.predicted.per_token_s < kept.target.predicted.per_token_s:
        assert moved.moved and rollout.ranges_of(moved.target) == rollout.ranges_of(fresh)


def test_decide_replans_when_a_stage_node_is_gone() -> None:
    inv = _inv([node("a1", A100), node("a2", A100), node("l1", L40S), node("l2", L40S)])
    deployed = rollout.ranges_of(solve(inv.problem))
    victim = next(iter(deployed))
    rest = [n for n in ("a1", "a2", "l1", "l2") if not victim.startswith(n)]
    products = {"a1": A100, "a2": A100, "l1": L40S, "l2": L40S}
    inv2 = _inv([node(n, products[n]) for n in rest])
    fresh = solve(inv2.problem)
    d = rollout.decide(inv2.problem, deployed, fresh, threshold=0.1)
    if rollout.covers(80, (r for s, r in deployed.items() if s != victim)):
        assert not d.moved or "re-planned" in d.reason or "moved" in d.reason
    else:
        assert d.moved and "re-planned" in d.reason
    assert victim not in rollout.ranges_of(d.target)


def test_evaluate_matches_the_solver_on_its_own_placement() -> None:
    inv = _inv([node("a1", A100), node("a2", A100), node("l1", L40S)])
    plan = solve(inv.problem)
    again = rollout.evaluate(inv.problem, rollout.ranges_of(plan), 4, "x")
    assert again.feasible and again.predicted and plan.predicted
    assert again.predicted.per_token_s <= plan.predicted.per_token_s + 1e-12
    assert not rollout.evaluate(inv.problem, {"a1-g0": (0, 10)}, 4, "x").feasible
    assert list(itertools.islice(again.routes.values(), 1))
