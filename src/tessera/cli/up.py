"""`tessera up [FILE] [--port P]`: the whole product on this machine (virtual node pool)."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from tessera.errors import InvalidInput

from .files import load_mapping

DEFAULT_FILE = "examples/local.yaml"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("up", help="run stages and the router locally on a virtual node pool")
    p.add_argument(
        "file", nargs="?", default=DEFAULT_FILE, help=f"pool file (default {DEFAULT_FILE})"
    )
    p.add_argument(
        "--port", type=int, default=None, help="router port (default: from the file, 8000)"
    )
    p.add_argument("--run-dir", default=None, help="where plan, problem, endpoints and logs go")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not pathlib.Path(args.file).is_file():
        raise InvalidInput(
            "FILE", f"{args.file} does not exist; give a pool file (see {DEFAULT_FILE})"
        )
    from tessera.local.config import parse_config
    from tessera.local.launcher import Launcher
    from tessera.worker.convert import ensure_local

    cfg = parse_config(load_mapping(args.file))
    keys = cfg.router.api_keys_file
    if keys is not None:  # relative to the pool file, like any path in it
        path = (pathlib.Path(args.file).parent / keys).resolve()
        if not path.is_file():
            raise InvalidInput("router.api_keys_file", f"{path} does not exist")
        cfg = cfg.model_copy(
            update={"router": cfg.router.model_copy(update={"api_keys_file": str(path)})}
        )
    model_dir = ensure_local(cfg.model.source)  # convert a packaged model once, before the workers
    run_dir = pathlib.Path(args.run_dir) if args.run_dir else None
    launcher = Launcher(
        cfg, model_dir, port=args.port, run_dir=run_dir, out=lambda s: print(s, flush=True)
    )
    return launcher.run()
