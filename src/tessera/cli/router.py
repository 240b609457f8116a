"""`tessera router --plan P --problem Q --endpoints E --model-name N --tokenizer T`."""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
from typing import Any

from tessera.api.launch import TOKEN_ENV, RouterLaunch
from tessera.api.launch import parse_wire_dtypes as parse_wire_dtypes
from tessera.errors import InvalidInput
from tessera.router.stragglers import StragglerPolicy


def add_parser(sub: Any) -> None:
    p = sub.add_parser("router", help="serve the OpenAI API over the stages of a plan")
    RouterLaunch.add_arguments(p)  # every flag is a field of the launch contract
    p.set_defaults(func=run)


def read_token(path: str | None, flag: str) -> str | None:
    """The deployment token from a file (stripped) or from TOKEN_ENV; None if neither."""
    if path:
        try:
            token = pathlib.Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidInput(flag, f"cannot read {path}: {exc.strerror}") from None
        if not token:
            raise InvalidInput(flag, f"{path} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def launch_of(args: argparse.Namespace) -> RouterLaunch:
    """The launch the parsed flags describe."""
    return RouterLaunch.from_args(args)


def load_config(args: argparse.Namespace) -> Any:
    from tessera.router.app import RouterConfig
    from tessera.router.http_limits import HttpLimits
    from tessera.router.reload import PlanFiles, read_plan_set
    from tessera.router.tokenizer import load_tokenizer

    launch = launch_of(args)
    files = PlanFiles(
        pathlib.Path(launch.plan), pathlib.Path(launch.problem), pathlib.Path(launch.endpoints)
    )
    plan_set = read_plan_set(files)
    for flag in ("max_wait_s", "down_s", "reload_interval_s", "straggler_floor_s", "hedge_budget"):
        if getattr(launch, flag) < 0:
            raise InvalidInput(f"--{flag.replace('_', '-')}", "must not be negative")
    positive = ("step_timeout_s", "failover_timeout_s", "max_queue", "max_header_bytes")
    timeouts = ("header_timeout_s", "body_timeout_s", "keep_alive_s", "straggler_multiple")
    for flag in positive + timeouts:
        if getattr(launch, flag) <= 0:
            raise InvalidInput(f"--{flag.replace('_', '-')}", "must be positive")
    keys = pathlib.Path(launch.api_keys_file) if launch.api_keys_file else None
    if keys is not None and not keys.is_file():
        raise InvalidInput("--api-keys-file", f"{keys} does not exist")
    return RouterConfig(
        problem=plan_set.problem,
        plan=plan_set.plan,
        endpoints=plan_set.endpoints,
        model_name=launch.model_name,
        tokenizer=load_tokenizer(launch.tokenizer),
        client=launch.client,
        max_wait_s=launch.max_wait_s,
        max_queue=launch.max_queue,
        step_timeout_s=launch.step_timeout_s,
        down_s=launch.down_s,
        failover_timeout_s=launch.failover_timeout_s,
        stragglers=StragglerPolicy(
            floor_s=launch.straggler_floor_s,
            multiple=launch.straggler_multiple,
            hedge_budget=launch.hedge_budget,
            hedge_first_token=launch.hedge_budget > 0,
        ),
        api_keys_file=keys,
        worker_token=read_token(launch.worker_token_file, "--worker-token-file"),
        plan_files=files if launch.reload_interval_s > 0 else None,
        reload_interval_s=launch.reload_interval_s or 2.0,
        http_limits=HttpLimits(
            max_head_bytes=launch.max_header_bytes,
            header_timeout_s=launch.header_timeout_s,
            body_timeout_s=launch.body_timeout_s,
            keep_alive_s=launch.keep_alive_s,
        ),
        wire_dtypes=dict(launch.wire_dtypes),
    )


def run(args: argparse.Namespace) -> int:
    launch = launch_of(args)
    logging.basicConfig(level=launch.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    from tessera.router.app import serve

    serve(load_config(args), host=launch.host, port=launch.port)
    return 0
