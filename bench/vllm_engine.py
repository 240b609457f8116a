"""`make bench-vllm`: a vLLM replica through Tessera's router, and the mixed pool (replica plus a
split chain), against vLLM called directly, in one command.

Two pools, one after the other (this machine has 2 cores; never two vLLMs at once), from
`examples/local-vllm.yaml` with the workload's concurrency raised to the most streams:

1. replica alone: `tessera up` with only node-big (engine: vllm). Measured twice at each
   stream count: vLLM's own OpenAI server called directly (its URL and token from the run
   directory) and through Tessera's router. Target: router / direct >= 0.9 in tok/s.
2. mixed: node-big plus node-a and node-b (a split chain). Through the router at 8 and 32
   streams. Target: mixed / replica-through-router >= 1.2 in aggregate tok/s.

Streamed greedy chat completions with a fixed max_tokens, as `bench.peer_vllm` (whose client and
scenarios this reuses). Standalone: `.venv/bin/python -m bench.vllm_engine [--streams 1,8,32]
[--max-tokens N] [--rounds N] [--eager] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import httpx
import yaml

from bench.peer_vllm import (
    REPO,
    VENV_PY,
    Server,
    _free_port,
    build_vllm_venv,
    run_scenario,
)

POOL = REPO / "examples" / "local-vllm.yaml"
TARGET_ROUTER = 0.9
TARGET_MIXED = 1.2


def pool_file(tmp: pathlib.Path, *, mixed: bool, streams: int, eager: bool) -> pathlib.Path:
    cfg = yaml.safe_load(POOL.read_text())
    cfg["workload"]["concurrent_requests"] = streams
    if not mixed:
        cfg["nodes"] = [n for n in cfg["nodes"] if n.get("engine") == "vllm"]
    for n in cfg["nodes"]:  # room for the raised concurrency
        n["memory_bytes"] = "4Gi" if n.get("engine") == "vllm" else "1Gi"
    cfg["vllm"].update({"python": str(VENV_PY), "enforce_eager": eager, "kv_cache_gib": 2})
    cfg["router"]["max_wait_s"] = 120
    path = tmp / f"pool-{'mixed' if mixed else 'replica'}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tessera_up(pool: pathlib.Path, run_dir: pathlib.Path) -> Server:
    tessera = REPO / ".venv" / "bin" / "tessera"
    port = _free_port()
    argv = [str(tessera), "up", str(pool), f"--port={port}", f"--run-dir={run_dir}"]
    return Server(
        f"tessera up {pool.stem}", argv, {"HF_HUB_OFFLINE": "1"}, port, run_dir.with_suffix(".log")
    )


def measure(
    base: str, args: argparse.Namespace, label: str, headers: dict[str, str] | None = None
) -> dict[int, float]:
    """Aggregate tok/s at each stream count, after a warm-up at the most streams (a fresh vLLM
    pays once for each new batch shape: whoever is measured first would pay it)."""
    asyncio.run(run_scenario(base, max(args.streams), 1, args.max_tokens, 300, headers))
    out: dict[int, float] = {}
    for streams in args.streams:
        rounds = 2 if streams == 1 else args.rounds
        sc = asyncio.run(
            run_scenario(base, streams, rounds, args.max_tokens, args.budget_s, headers)
        )
        failed = len(sc.answers) - sc.count(served=True)
        out[streams] = round(sc.tok_s, 2)
        print(f"{label}: {streams} streams: {out[streams]} tok/s, {failed} failed", flush=True)
    return out


def wait_routed(base: str, server: str = "node-big", timeout_s: float = 300.0) -> None:
    """Until the router routes to the replica (it first measures vLLM's decode time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/readyz", timeout=5, trust_env=False)
        if server in r.json().get("stages_up", []):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the router never routed to {server}")


class _Direct:
    """vLLM's server of a `tessera up` run, called directly with the run's worker token."""

    def __init__(self, run_dir: pathlib.Path) -> None:
        url = json.loads((run_dir / "endpoints.json").read_text())["node-big"]
        self.base = url.removeprefix("vllm+")
        self.token = (run_dir / "worker-token").read_text().strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.vllm_engine", description=__doc__.split("\n")[0]
    )
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=240.0)
    p.add_argument("--eager", action="store_true", help="vLLM with --enforce-eager (starts sooner)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.streams = [int(s) for s in args.streams.split(",")]
    build_vllm_venv()
    most = max(args.streams)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp_s:
        tmp = pathlib.Path(tmp_s)
        replica = tessera_up(
            pool_file(tmp, mixed=False, streams=most, eager=args.eager), tmp / "replica"
        )
        try:
            replica.start()
            wait_routed(replica.base)
            direct = _Direct(tmp / "replica")
            auth = {"authorization": f"Bearer {direct.token}"}  # vLLM's API key
            results["direct"] = measure(direct.base, args, "vLLM direct", auth)
            results["router"] = measure(replica.base, args, "replica via router")
        finally:
            replica.stop()
        mixed = tessera_up(
            pool_file(tmp, mixed=True, streams=most, eager=args.eager), tmp / "mixed"
        )
        try:
            mixed.start()
            wait_routed(mixed.base)
            args.streams = [s for s in args.streams if s > 1]
            results["mixed"] = measure(mixed.base, args, "mixed pool via router")
        finally:
            mixed.stop()
    report(results)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict[str, Any]) -> None:
    d, r, m = results.get("direct", {}), results.get("router", {}), results.get("mixed", {})
    print(f"\n{'streams':>8}  {'vLLM direct':>12}  {'via router':>11}  {'router/direct':>13}  "
          f"{'mixed':>8}  {'mixed/replica':>13}")  # fmt: skip
    for n in sorted(set(d) | set(r) | set(m)):
        rd = f"{r[n] / d[n]:.2f}x" if d.get(n) and n in r else "-"
        mr = f"{m[n] / r[n]:.2f}x" if r.get(n) and n in m else "-"
        print(f"{n:>8}  {d.get(n, '-'):>12}  {r.get(n, '-'):>11}  {rd:>13}  "
              f"{m.get(n, '-'):>8}  {mr:>13}")  # fmt: skip
    print(
        f"targets: router/direct >= {TARGET_ROUTER}x; mixed/replica >= {TARGET_MIXED}x at 8 and 32"
    )


if __name__ == "__main__":
    sys.exit(main())
