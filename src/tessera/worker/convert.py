"""Convert a packaged GGUF model once into a safetensors directory in the cache.

Loading the GGUF through transformers dequantizes it (about 20 s); the safetensors copy then
loads in a fraction of a second and lets each stage read only its own tensors. The conversion
runs under a file lock and writes into a temporary directory that is renamed at the end, so
concurrent workers (or a test session and `make run`) never see half a model.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
import sys
import tempfile

from tqdm import tqdm

from tessera.modelfiles import ModelSource, resolve


def ensure_local(spec: str, *, quiet: bool = False) -> pathlib.Path:
    """The directory of `spec`, converting a packaged model first when needed."""
    source = resolve(spec)
    if source.ready:
        return source.directory
    convert(source, quiet=quiet)
    return source.directory


def convert(source: ModelSource, *, quiet: bool = False) -> None:
    if source.gguf is None:
        raise FileNotFoundError(f"{source.directory}: no config.json and nothing to convert")
    target = source.directory
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if source.ready:  # someone else converted it while we waited
            return
        _convert_locked(source.gguf, target, quiet)


def _convert_locked(gguf: pathlib.Path, target: pathlib.Path, quiet: bool) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bar = tqdm(
        total=4,
        desc=f"converting {gguf.name} once into {target}",
        disable=quiet,
        file=sys.stderr,
        unit="step",
    )
    bar.set_postfix_str("tokenizer")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    bar.update()
    bar.set_postfix_str("dequantizing weights (about 20 s)")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    bar.update()
    bar.set_postfix_str("writing safetensors")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        tied = bool(getattr(config, "tie_word_embeddings", False))
        state = {
            k: v.detach().contiguous().clone()
            for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")  # tied: stored once, as the embedding
        }
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        bar.update()
        bar.set_postfix_str("config and tokenizer")
        config.architectures = [type(model).__name__]
        config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        bar.update()
        if target.exists():  # an incomplete earlier attempt (no config.json): we hold the lock
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
