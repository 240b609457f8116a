"""`tessera plan PROBLEM --solver auto|cg-bprr|petals|milp [--format json|table] [--max-servers N]`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from tessera.errors import InvalidInput
from tessera.placement import SOLVERS, plan_to_dict, problem_from_dict, solve
from tessera.placement.report import render_table

from .files import load_mapping

EXIT_INFEASIBLE = 3


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="place blocks and route clients for a problem file")
    p.add_argument("problem", help="problem file (YAML or JSON, see placement-contract.md)")
    p.add_argument("--solver", default="auto", choices=list(SOLVERS))
    p.add_argument("--format", default="table", choices=["json", "table"])
    p.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="time limit of auto and the MILP in seconds (default 60)",
    )
    p.add_argument(
        "--max-servers", type=int, default=None, help="at most this many GPUs get blocks"
    )
    p.add_argument("--seed", type=int, default=0, help="PETALS join-order seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.time_limit) or args.time_limit <= 0:
        raise InvalidInput("--time-limit", "must be a positive number of seconds")
    problem = problem_from_dict(load_mapping(args.problem))
    plan = solve(
        problem,
        args.solver,
        seed=args.seed,
        time_limit_s=args.time_limit,
        max_servers=args.max_servers,
    )
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


__all__ = ["add_parser", "render_table", "run"]
