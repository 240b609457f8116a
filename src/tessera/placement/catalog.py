"""Built-in GPU classes and model presets, and the performance constants they imply.

Where the paper fitted constants (BLOOM-176B on A100-80GB and MIG 1g.10gb, reference section 2.2)
they are used as measured. Other pairs are estimates from the card's data sheet: a decode step of
one block reads the block's weights once (memory-bandwidth bound) and a prefill token costs two
FLOPs per parameter (compute bound), each at a stated efficiency. Estimates, not measurements:
calibrate with the worker's measured `/state` where it matters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .memory import EndWeights
from .model import PrefillCost


@dataclass(frozen=True)
class GpuClass:
    name: str
    memory_bytes: int  # usable for weights and KV cache
    bandwidth_bytes_per_s: float
    dense_flops_per_s: float  # bf16/fp16 dense tensor throughput
    product_labels: tuple[str, ...] = ()  # values of nvidia.com/gpu.product that mean this class


@dataclass(frozen=True)
class ModelPreset:
    name: str
    num_blocks: int
    block_bytes: int
    cache_bytes_per_token: int
    params_per_block: int
    d_model: int = 0  # 0: unknown (PETALS' sizing then assumes multi-head attention)
    kv_groups: int = 1  # attention heads per KV head (1: multi-head attention)
    vocab_size: int = 0  # 0: unknown (no room is kept for the embedding and LM head)
    tied_embeddings: bool = False

    def in_dtype(self, dtype_bytes: int) -> ModelPreset:
        """The preset as a worker loads it in a dtype of `dtype_bytes`: the parameter counts
        stay, block and KV bytes follow (the listed sizes may be of another format, e.g. NF4)."""
        return replace(
            self,
            block_bytes=self.params_per_block * dtype_bytes,
            cache_bytes_per_token=self.cache_bytes_per_token * dtype_bytes // PRESET_KV_BYTES,
        )

    def end_weights(self, dtype_bytes: int) -> EndWeights:
        return EndWeights(
            self.vocab_size * self.d_model * dtype_bytes,
            self.d_model * dtype_bytes,
            self.tied_embeddings,
        )


PRESET_KV_BYTES = 2  # every preset's cache_bytes_per_token is for a 16-bit KV cache
BANDWIDTH_EFFICIENCY = 0.7
COMPUTE_EFFICIENCY = 0.5
PREFILL_FIXED_S = 0.001  # per block: kernel launches and synchronisation

GB = 10**9
GPU_CLASSES: dict[str, GpuClass] = {
    g.name: g
    for g in (
        GpuClass(
            "h100-80gb",
            79 * GB,
            3.35e12,
            989e12,
            ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-SXM5-80GB"),
        ),
        GpuClass(
            "a100-80gb",
            79_130_000_000,
            2.0e12,
            312e12,
            ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
        ),
        GpuClass(
            "a100-40gb",
            39 * GB,
            1.555e12,
            312e12,
            ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
        ),
        GpuClass("l40s", 46 * GB, 0.864e12, 362e12, ("NVIDIA-L40S",)),
        GpuClass("l4", 22 * GB, 0.3e12, 121e12, ("NVIDIA-L4",)),
        GpuClass("t4", 15 * GB, 0.32e12, 65e12, ("Tesla-T4",)),
        GpuClass(
            "mig-1g.10gb",
            8_200_000_000,
            0.25e12,
            44e12,
            ("NVIDIA-A100-SXM4-80GB-MIG-1g.10gb", "NVIDIA-A100-80GB-PCIe-MIG-1g.10gb"),
        ),
    )
}

MODELS: dict[str, ModelPreset] = {
    m.name: m
    for m in (
        # NF4 weights as in the paper: 2,466,437,120 params x 4.25/8 bytes x 1.01.
        # BLOOM ties its 250,880-token embedding to the LM head.
        ModelPreset(
            "bloom-176b", 70, 1_323_393_024, 57_344, 2_466_437_120, 14_336, 1, 250_880, True
        ),
        # Llama-2/3-70B in bf16: 855,654,400 params per block; GQA with 8 KV heads of 128;
        # Llama-3's vocabulary (the larger), untied.
        ModelPreset("llama-70b", 80, 1_711_308_800, 4_096, 855_654_400, 8_192, 8, 128_256),
        # Llama-3-8B in bf16: 218,112,000 params per block; GQA 8 KV heads of 128.
        ModelPreset("llama-8b", 32, 436_224_000, 4_096, 218_112_000, 4_096, 4, 128_256),
    )
}

# (model, gpu) -> (decode s per block, prefill per-token s, prefill fixed s): the paper's fits.
FITTED: dict[tuple[str, str], tuple[float, float, float]] = {
    ("bloom-176b", "a100-80gb"): (0.0032197, 0.0000743, 0.03299),
    ("bloom-176b", "mig-1g.10gb"): (0.0162488, 0.0001041, 0.2063547),
}


def server_costs(model: ModelPreset, gpu: GpuClass) -> tuple[float, PrefillCost]:
    """decode_s_per_block and prefill_s_per_block of `model` on `gpu`: fitted where known, else estimated."""
    fitted = FITTED.get((model.name, gpu.name))
    if fitted is not None:
        return fitted[0], PrefillCost(fitted[1], fitted[2])
    decode = model.block_bytes / (gpu.bandwidth_bytes_per_s * BANDWIDTH_EFFICIENCY)
    per_token = 2 * model.params_per_block / (gpu.dense_flops_per_s * COMPUTE_EFFICIENCY)
    return decode, PrefillCost(per_token, PREFILL_FIXED_S)
