"""A short start-up calibration: measured seconds per block of a decode step and of prefill."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .blocks import StageModel

PREFILL_TOKENS = 16
DECODE_STEPS = 6


@dataclass(frozen=True)
class Calibration:
    decode_s_per_block: float
    prefill_s_per_block_per_token: float


def calibrate(stage: StageModel, speed_factor: float = 1.0) -> Calibration:
    """Run a throw-away session over all held blocks; scale by the emulated speed factor."""
    gen = torch.Generator().manual_seed(0)
    cache = stage.new_cache()

    def inp(t: int) -> torch.Tensor:
        if stage.first:
            return torch.randint(0, int(stage.config.vocab_size), (1, t), generator=gen)
        return torch.randn(1, t, stage.hidden_size, generator=gen).to(stage.dtype)

    t0 = time.perf_counter()
    stage.forward(inp(PREFILL_TOKENS), cache, 0)
    prefill_s = time.perf_counter() - t0
    steps = []
    for i in range(DECODE_STEPS):
        t0 = time.perf_counter()
        stage.forward(inp(1), cache, PREFILL_TOKENS + i)
        steps.append(time.perf_counter() - t0)
    blocks = stage.end - stage.start
    return Calibration(
        decode_s_per_block=statistics.median(steps[1:]) / blocks * speed_factor,
        prefill_s_per_block_per_token=prefill_s / PREFILL_TOKENS / blocks * speed_factor,
    )
