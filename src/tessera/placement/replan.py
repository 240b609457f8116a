"""Re-planning with hysteresis, and a rollout that never breaks a complete chain (pure).

`deployed` maps a server to the block range its stage declares; `ready` is the set of servers
whose stage is ready for that range. A stage is identified by its server (one GPU), so a server
changing its range is one stage replaced in place (the GPU cannot hold the old and the new range
at once). Safety rule: a stage is removed or changed only while the other ready stages still
cover every block; new servers start at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .evaluate import Ranges, covers, evaluate
from .model import Plan, Problem
from .validate import validate

MAX_ROLLOUT_STEPS = 1000


def ranges_of(plan: Plan) -> dict[str, tuple[int, int]]:
    return {p.server: (p.start, p.end) for p in plan.placement}


@dataclass(frozen=True)
class Decision:
    target: Plan
    moved: bool  # the target differs from what is deployed
    reason: str


def decide(
    problem: Problem,
    deployed: Ranges,
    fresh: Plan,
    threshold: float,
    *,
    max_servers: int | None = None,
) -> Decision:
    """Keep the deployed placement unless it is broken, over `max_servers`, or the fresh plan is
    clearly better."""
    if not fresh.feasible:
        return Decision(fresh, False, fresh.reason or "infeasible")
    fresh_ranges = ranges_of(fresh)
    if not deployed:
        return Decision(fresh, True, "initial plan")
    if dict(deployed) == fresh_ranges:
        return Decision(fresh, False, "plan unchanged")
    if max_servers is not None and len(deployed) > max_servers:
        return Decision(
            fresh, True, f"re-planned: {len(deployed)} stages, over the bound of {max_servers}"
        )
    concurrency = fresh.statistics.concurrent_requests or 1  # the plan's own |R|
    current = evaluate(problem, deployed, concurrency, f"{fresh.solver} (deployed)")
    if not current.feasible:
        return Decision(fresh, True, f"re-planned: {current.reason}")
    errors = validate(problem, current)
    if errors:
        return Decision(fresh, True, f"re-planned: the deployed stages no longer fit ({errors[0]})")
    old_s = current.predicted.per_token_s if current.predicted else math.inf
    new_s = fresh.predicted.per_token_s if fresh.predicted else math.inf
    gain = 1.0 - new_s / old_s if old_s > 0 and math.isfinite(old_s) else 0.0
    if gain <= threshold:
        return Decision(
            current, False, f"kept: a new plan gains {gain:.1%}, threshold {threshold:.0%}"
        )
    if not rollout_safe(problem.num_blocks, deployed, fresh_ranges):
        return Decision(
            current, False, f"kept: moving for {gain:.1%} would break every chain on the way"
        )
    return Decision(fresh, True, f"moved: per-token time {old_s:.4g}s -> {new_s:.4g}s")


@dataclass(frozen=True)
class Step:
    apply: tuple[str, ...]  # create, or replace with the target range
    delete: tuple[str, ...]


def rollout_step(num_blocks: int, deployed: Ranges, ready: Iterable[str], target: Ranges) -> Step:
    """What may change now without leaving the model without a complete chain."""
    ready_set = set(ready)
    start_new = [s for s in sorted(target) if s not in deployed]
    changing = [s for s in sorted(deployed) if s in target and target[s] != deployed[s]]
    removing = [s for s in sorted(deployed) if s not in target]
    live = {s: r for s, r in deployed.items() if s in ready_set and target.get(s, r) == r}
    live |= {s: deployed[s] for s in changing + removing if s in ready_set}
    if not covers(num_blocks, live.values()):  # already broken: nothing left to protect
        return Step(tuple(sorted(start_new + changing)), tuple(removing))
    apply, delete = list(start_new), list[str]()
    for s in removing + changing:  # removals first: they free capacity without a reload
        if s not in live:
            (delete if s in removing else apply).append(s)
            continue
        rest = {k: v for k, v in live.items() if k != s}
        if covers(num_blocks, rest.values()):
            live = rest
            (delete if s in removing else apply).append(s)
    return Step(tuple(sorted(apply)), tuple(sorted(delete)))


def rollout_safe(num_blocks: int, deployed: Ranges, target: Ranges) -> bool:
    """Whether the rollout can finish, assuming every started stage becomes ready."""
    state = dict(deployed)
    for _ in range(MAX_ROLLOUT_STEPS):
        if state == dict(target):
            return True
        step = rollout_step(num_blocks, state, state.keys(), target)
        if not step.apply and not step.delete:
            return False
        for s in step.delete:
            del state[s]
        for s in step.apply:
            state[s] = target[s]
    return False
