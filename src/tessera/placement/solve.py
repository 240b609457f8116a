"""One entry point for every solver: choose |R|, solve, time it, and check the result."""

from __future__ import annotations

import math
import time
from types import MappingProxyType
from typing import Literal

from tessera.errors import InvalidInput

from . import cg_bprr, milp, petals
from .model import Plan, Problem
from .validate import supported_concurrency, validate

SolverName = Literal["cg-bprr", "petals", "milp"]
SOLVERS: tuple[SolverName, ...] = ("cg-bprr", "petals", "milp")


def choose_concurrency(problem: Problem) -> tuple[int, str]:
    """|R| as given, or the paper's rule from the arrival rate: mean plus one standard deviation of the
    Poisson occupancy lambda*T_1 (T_1: one request's completion time under CG-BPRR with |R| = 1),
    capped by the largest feasible |R| (Corollary 1)."""
    w = problem.workload
    if w.concurrent_requests is not None:
        return w.concurrent_requests, "given"
    if w.arrival_rate is None:
        raise InvalidInput("workload", "give concurrent_requests or arrival_rate")
    r_max = cg_bprr.max_feasible_concurrency(problem)
    if r_max == 0:
        return 1, "auto: not even one session fits"
    single = cg_bprr.solve(problem, 1)
    if single.predicted is None:
        return 1, "auto: no chain at |R| = 1"
    t1 = single.predicted.first_token_s + (w.max_output_tokens - 1) * single.predicted.per_token_s
    load = w.arrival_rate * t1
    wanted = max(1, math.floor(load + math.sqrt(load) + 0.5))
    chosen = min(wanted, r_max)
    return chosen, f"auto: lambda*T1 = {load:.3g}, mean + 1 sd = {wanted}, feasibility cap {r_max}"


def _fastest(problem: Problem, max_servers: int) -> Problem:
    """The problem with only its `max_servers` fastest servers (temporary: see issue 11)."""
    ranked = sorted(problem.servers, key=lambda s: (s.decode_s_per_block, -s.memory_bytes, s.name))
    keep = {s.name for s in ranked[:max_servers]}
    return Problem(
        problem.model,
        problem.workload,
        tuple(s for s in problem.servers if s.name in keep),
        problem.clients,
        tuple(lk for lk in problem.links if lk.server in keep),
    )


def solve(
    problem: Problem,
    solver: SolverName = "cg-bprr",
    *,
    seed: int = 0,
    time_limit_s: float = 60.0,
    max_servers: int | None = None,
) -> Plan:
    if solver not in SOLVERS:
        raise InvalidInput(
            "solver", f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}"
        )
    if time_limit_s <= 0:
        raise InvalidInput("time_limit", "must be a positive number of seconds")
    if max_servers is not None:
        if max_servers < 1:
            raise InvalidInput("max_servers", "must be at least 1")
        if len(problem.servers) > max_servers:
            problem = _fastest(problem, max_servers)
    t0 = time.perf_counter()
    concurrency, how = choose_concurrency(problem)
    if solver == "cg-bprr":
        plan = cg_bprr.solve(problem, concurrency)
    elif solver == "petals":
        plan = petals.solve(problem, concurrency, petals.PetalsParams.for_problem(problem, seed))
        if plan.feasible:
            # PETALS sizes its KV pool without looking at |R|: say how many sessions its routes really carry.
            held = supported_concurrency(
                problem, _with_stats(plan, concurrent_requests=0), concurrency
            )
            plan = _with_stats(plan, concurrent_requests=held)
    else:
        plan = milp.solve(problem, concurrency, time_limit_s).plan
    stats = {"wall_s": time.perf_counter() - t0, "proven_optimal": False, **dict(plan.stats)}
    stats.setdefault("concurrent_requests", concurrency)
    stats["concurrent_requests_source"] = how
    plan = Plan(
        plan.solver,
        plan.feasible,
        plan.placement,
        plan.routes,
        plan.predicted,
        MappingProxyType(stats),
        plan.reason,
    )
    errors = validate(problem, plan)
    if errors:  # a solver bug, never the user's fault: fail loudly rather than print a bad plan
        raise RuntimeError(f"{solver} produced an invalid plan: {'; '.join(errors)}")
    return plan


def _with_stats(plan: Plan, **extra: object) -> Plan:
    return Plan(
        plan.solver,
        plan.feasible,
        plan.placement,
        plan.routes,
        plan.predicted,
        MappingProxyType({**dict(plan.stats), **extra}),
        plan.reason,
    )
