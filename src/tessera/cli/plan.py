"""`tessera plan PROBLEM --solver cg-bprr|petals|milp [--format json|table]`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from tessera.errors import InvalidInput
from tessera.placement import Plan, Problem, plan_to_dict, problem_from_dict, solve
from tessera.placement.model import Placement

from .files import load_mapping

EXIT_INFEASIBLE = 3
BAR_WIDTH = 60


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="place blocks and route clients for a problem file")
    p.add_argument("problem", help="problem file (YAML or JSON, see placement-contract.md)")
    p.add_argument("--solver", default="cg-bprr", choices=["cg-bprr", "petals", "milp"])
    p.add_argument("--format", default="table", choices=["json", "table"])
    p.add_argument(
        "--time-limit", type=float, default=60.0, help="MILP time limit in seconds (default 60)"
    )
    p.add_argument("--seed", type=int, default=0, help="PETALS join-order seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.time_limit) or args.time_limit <= 0:
        raise InvalidInput("--time-limit", "must be a positive number of seconds")
    problem = problem_from_dict(load_mapping(args.problem))
    plan = solve(problem, args.solver, seed=args.seed, time_limit_s=args.time_limit)
    if args.format == "json":
        json.dump(plan_to_dict(plan), sys.stdout, indent=2)
        print()
    else:
        baseline = solve(problem, "petals", seed=args.seed) if args.solver != "petals" else None
        print(render_table(problem, plan, baseline))
    if not plan.feasible:
        if args.format == "json":
            print(f"tessera: infeasible: {plan.reason}", file=sys.stderr)
        return EXIT_INFEASIBLE
    return 0


def _bar(p: Placement, n_blocks: int) -> str:
    scale = BAR_WIDTH / n_blocks
    lo, hi = round(p.start * scale), max(round(p.end * scale), round(p.start * scale) + 1)
    return "." * lo + "#" * (hi - lo) + "." * (BAR_WIDTH - hi)


def render_table(problem: Problem, plan: Plan, baseline: Plan | None) -> str:
    lines = [f"solver: {plan.solver}   model: {problem.model.name} ({problem.num_blocks} blocks)"]
    if not plan.feasible:
        lines.append(f"INFEASIBLE: {plan.reason}")
        return "\n".join(lines)
    width = max(len(p.server) for p in plan.placement)
    lines.append(
        f"{'server'.ljust(width)}  {'blocks':>9}  0{' ' * (BAR_WIDTH - 2)}{problem.num_blocks}"
    )
    for p in plan.placement:
        lines.append(
            f"{p.server.ljust(width)}  {p.start:>3}..{p.end - 1:<4}  {_bar(p, problem.num_blocks)}"
        )
    lines.append("")
    for client, chain in plan.routes.items():
        lines.append(f"{client}: {' > '.join(chain)}")
    pred = plan.predicted
    if pred is not None:
        lines.append("")
        lines.append(f"predicted per-token time : {pred.per_token_s * 1000:.1f} ms")
        lines.append(f"predicted first-token    : {pred.first_token_s * 1000:.1f} ms")
        if pred.bound_per_token_s is not None:
            lines.append(f"Theorem 2 bound          : {pred.bound_per_token_s * 1000:.1f} ms")
    stats = plan.stats
    lines.append(
        f"concurrent requests      : {stats.get('concurrent_requests')} ({stats.get('concurrent_requests_source', '')})"
    )
    if plan.solver == "milp":
        lines.append(
            f"proven optimal           : {stats.get('proven_optimal')} ({stats.get('milp_status')}/{stats.get('milp_sol_status')})"
        )
        if "fallback" in stats:
            lines.append(f"fallback                 : {stats['fallback']}")
    if baseline is not None:
        if baseline.feasible and baseline.predicted is not None and pred is not None:
            ratio = pred.per_token_s / baseline.predicted.per_token_s
            lines.append(
                f"PETALS on the same pool  : {baseline.predicted.per_token_s * 1000:.1f} ms/token "
                f"(this plan: {ratio:.2f}x), carries {baseline.stats.get('concurrent_requests')} "
                f"of {stats.get('concurrent_requests')} concurrent requests"
            )
        else:
            lines.append(f"PETALS on the same pool  : infeasible ({baseline.reason})")
    return "\n".join(lines)
