"""The batched engine on CUDA: device selection, bf16, and batched equals alone (GPU only)."""

from __future__ import annotations

import pytest
import torch

from tessera.worker.blocks import StageModel, load_stage, pick_device

from ..unit.datapath_helpers import smollm2_dir, tiny_model_dir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]


def test_auto_picks_the_gpu() -> None:
    assert pick_device("auto").type == "cuda"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_batch_equals_each_alone_and_the_cpu_in_fp32(dtype: str) -> None:
    d = smollm2_dir()
    gpu = [load_stage(d, 0, 12, dtype, "cuda"), load_stage(d, 12, 30, dtype, "cuda")]
    prompts = [
        torch.randint(0, 49152, (1, n), generator=torch.Generator().manual_seed(n))
        for n in (5, 31, 12)
    ]

    def run(stages: list[StageModel], batch: list[torch.Tensor]) -> list[torch.Tensor]:
        caches = [[s.new_cache(256) for s in stages] for _ in batch]
        hs = list(batch)
        for k, s in enumerate(stages):
            hs = s.forward_batch(hs, [c[k] for c in caches], [0] * len(batch))
        return hs

    together = run(gpu, prompts)
    alone = [run(gpu, [p])[0] for p in prompts]
    tol = 1e-4 if dtype == "float32" else 5e-2
    for a, b in zip(together, alone, strict=True):
        assert a.device.type == "cpu"  # logits come back for sampling on the host
        assert torch.allclose(a, b, atol=tol, rtol=0)
        assert int(a.argmax()) == int(b.argmax())
    if dtype == "float32":
        cpu = [load_stage(d, 0, 12), load_stage(d, 12, 30)]
        for a, b in zip(together, run(cpu, prompts), strict=True):
            assert int(a.argmax()) == int(b.argmax())


def test_tiny_model_on_gpu_keeps_kv_on_the_device() -> None:
    stage = load_stage(tiny_model_dir("llama"), 0, 8, "float32", "cuda")
    cache = stage.new_cache(64)
    stage.forward(torch.tensor([[1, 2, 3]]), cache, 0)
    assert cache.keys[0].device.type == "cuda" and cache.length == 3
