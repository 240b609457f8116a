"""Run one policy of a built scenario: place, simulate, summarise (pure; the caller times it)."""

from __future__ import annotations

from dataclasses import dataclass

from .engine import Served, simulate
from .metrics import Summary, summarise
from .policies import Policy, build_policy
from .scenarios import Scenario


@dataclass(frozen=True)
class PolicyRun:
    policy: Policy
    served: tuple[Served, ...]
    summary: Summary


def run_policy(scenario: Scenario, name: str) -> PolicyRun:
    policy = build_policy(
        scenario.problem, name, scenario.concurrent_requests, scenario.petals_seed
    )
    served = simulate(
        scenario.problem, policy, scenario.requests, scenario.overhead_s.get(name, 0.0)
    )
    return PolicyRun(policy, served, summarise(served, policy.concurrent_requests))
