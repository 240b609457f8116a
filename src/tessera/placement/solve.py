"""One entry point for every solver: choose |R|, solve, time it, and check the result."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Protocol, runtime_checkable

from tessera.errors import InvalidInput

from . import auto, cg_bprr, milp, petals
from .model import Plan, Problem
from .subset import fastest_servers, restrict
from .validate import supported_concurrency, validate

SolverName = Literal["auto", "cg-bprr", "petals", "milp"]
SOLVERS: tuple[SolverName, ...] = ("auto", "cg-bprr", "petals", "milp")


@dataclass(frozen=True)
class Limits:
    """What bounds one solve: when to stop, how many GPUs, which seed."""

    deadline_s: float  # a time.perf_counter() value
    max_servers: int | None = None
    seed: int = 0

    def left_s(self) -> float:
        return self.deadline_s - time.perf_counter()


@runtime_checkable
class Solver(Protocol):
    """A placement solver. One that `chooses_servers` gets the whole pool and honours
    `limits.max_servers` itself; the others get the documented subset (subset.fastest_servers)."""

    @property
    def name(self) -> str: ...

    @property
    def chooses_servers(self) -> bool: ...

    def solve(self, problem: Problem, concurrent_requests: int, limits: Limits) -> Plan: ...


@dataclass(frozen=True)
class FunctionSolver:
    name: str
    run: Callable[[Problem, int, Limits], Plan]
    chooses_servers: bool = False

    def solve(self, problem: Problem, concurrent_requests: int, limits: Limits) -> Plan:
        return self.run(problem, concurrent_requests, limits)


def _petals(problem: Problem, concurrency: int, limits: Limits) -> Plan:
    plan = petals.solve(problem, concurrency, petals.PetalsParams.for_problem(problem, limits.seed))
    if not plan.feasible:
        return plan
    # PETALS sizes its KV pool without looking at |R|: say how many sessions its routes really carry.
    held = supported_concurrency(problem, _with_stats(plan, concurrent_requests=0), concurrency)
    return _with_stats(plan, concurrent_requests=held)


REGISTRY: Mapping[SolverName, Solver] = MappingProxyType(
    {
        "auto": FunctionSolver(
            "auto",
            lambda p, r, lim: auto.solve(
                p, r, deadline_s=lim.deadline_s, max_servers=lim.max_servers, seed=lim.seed
            ),
            chooses_servers=True,
        ),
        "cg-bprr": FunctionSolver("cg-bprr", lambda p, r, _lim: cg_bprr.solve(p, r)),
        "petals": FunctionSolver("petals", _petals),
        "milp": FunctionSolver(
            "milp", lambda p, r, lim: milp.solve(p, r, max(lim.left_s(), 1e-3)).plan
        ),
    }
)


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


def solve(
    problem: Problem,
    solver: SolverName = "cg-bprr",
    *,
    seed: int = 0,
    time_limit_s: float = 60.0,
    max_servers: int | None = None,
) -> Plan:
    """Solve with one solver; at most `max_servers` servers (GPUs) get blocks when it is given."""
    if solver not in SOLVERS:
        raise InvalidInput(
            "solver", f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}"
        )
    if time_limit_s <= 0:
        raise InvalidInput("time_limit", "must be a positive number of seconds")
    if max_servers is not None and max_servers < 1:
        raise InvalidInput("max_servers", "must be at least 1")
    t0 = time.perf_counter()
    chosen = REGISTRY[solver]
    limits = Limits(t0 + time_limit_s, max_servers, seed)
    sub = problem
    if max_servers is not None and max_servers < len(problem.servers):
        # The documented subset: the fastest servers by CG-BPRR's amortised per-block time, ranked
        # at the declared concurrency (1 when only an arrival rate is given). `auto` chooses its own
        # subset, but takes |R| as CG-BPRR would, so that its floor is CG-BPRR's plan.
        rank_at = problem.workload.concurrent_requests or 1
        sub = restrict(problem, fastest_servers(problem, rank_at, max_servers))
    concurrency, how = choose_concurrency(sub)
    plan = chosen.solve(problem if chosen.chooses_servers else sub, concurrency, limits)
    stats = {"wall_s": time.perf_counter() - t0, "proven_optimal": False, **dict(plan.stats)}
    stats.setdefault("concurrent_requests", concurrency)
    stats["concurrent_requests_source"] = how
    stats["servers_used"] = len(plan.placement) if plan.feasible else 0
    if max_servers is not None:
        stats["max_servers"] = max_servers
    plan = _with_stats(plan, **stats)
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
