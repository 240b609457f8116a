"""`tessera worker --model M --blocks START:END --memory-bytes N ...`: one stage server."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from tessera.api.launch import TOKEN_ENV, WorkerLaunch
from tessera.errors import InvalidInput

from .router import read_token
from .sizes import parse_bytes


def add_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="serve a block range of a model (a pipeline stage)")
    WorkerLaunch.add_arguments(p)  # every flag is a field of the launch contract
    p.set_defaults(func=run)


def launch_of(args: argparse.Namespace) -> WorkerLaunch:
    """The launch the parsed flags describe (a byte size may carry a suffix: 80Gi)."""
    return WorkerLaunch.from_args(
        args, memory_bytes=parse_bytes("--memory-bytes", args.memory_bytes)
    )


def run(args: argparse.Namespace) -> int:
    launch = launch_of(args)
    start, end = launch.blocks
    if launch.max_length <= 0:
        raise InvalidInput("--max-length", "must be positive")
    if launch.batch_invariant and launch.threads != 1:
        raise InvalidInput(
            "--batch-invariant", "needs --threads 1 (two threads split some reductions)"
        )
    if launch.max_batch_tokens <= 0:
        raise InvalidInput("--max-batch-tokens", "must be positive")
    if launch.speed_factor < 1.0:
        raise InvalidInput("--speed-factor", "must be at least 1 (it can only slow a device down)")
    if launch.delay_s < 0 or launch.idle_timeout_s <= 0:
        raise InvalidInput("--delay-s/--idle-timeout-s", "must not be negative")
    bandwidth = launch.bandwidth_mbit_s
    if bandwidth is not None and bandwidth <= 0:
        raise InvalidInput("--bandwidth-mbit-s", "must be positive")
    logging.basicConfig(level=launch.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    token = read_token(launch.token_file, "--token-file")
    if token is None:
        logging.getLogger("tessera.worker").warning(
            "no --token-file or %s: anyone who reaches this port can use the stage", TOKEN_ENV
        )

    import torch  # noqa: PLC0415 - heavy: only for this command
    import uvicorn

    from tessera.worker.blocks import load_stage, pick_device
    from tessera.worker.convert import ensure_local
    from tessera.worker.server import Worker, WorkerSettings, build_app

    if launch.threads > 0:
        torch.set_num_threads(launch.threads)
    directory = ensure_local(launch.model)
    settings = WorkerSettings(
        name=launch.name or f"{launch.host}:{launch.port}",
        model=launch.model,
        start_block=start,
        end_block=end,
        memory_bytes=launch.memory_bytes,
        max_length=launch.max_length,
        speed_factor=launch.speed_factor,
        delay_s=launch.delay_s,
        bandwidth_bytes_per_s=bandwidth * 1e6 / 8 if bandwidth else None,
        idle_timeout_s=launch.idle_timeout_s,
        max_batch_tokens=launch.max_batch_tokens,
        batch_invariant=launch.batch_invariant,
    )
    device = pick_device(launch.device)
    worker = Worker(settings, lambda: load_stage(directory, start, end, launch.dtype, device))
    uvicorn.run(
        build_app(worker, token),
        host=launch.host,
        port=launch.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=600,  # the router keeps one connection per stage: do not drop it idle
    )
    return 0
