"""One contiguous block range of a Llama-family causal LM, loaded alone and run exactly.

The stage is a fresh Hugging Face body (LlamaModel, MistralModel, Qwen2Model) built from a copy
of the config with `num_hidden_layers = end - start` (layers re-indexed from 0), under the meta
device so that nothing is randomly initialised, then filled with only this range's tensors read
from the safetensors files. It holds the embedding iff `start == 0` and the final norm and LM
head iff `end == L`. `forward` runs any sub-range `[a, b)` of the held layers for a session (a
chain hop may start inside a server's range) with the same masks and rotary positions as the
whole model, so split stages reproduce the whole model's logits.
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModel

from tessera.errors import InvalidInput
from tessera.modelfiles import architecture, read_config

from .batch import ATTN_IMPLEMENTATION, Packed, PackedCache, SessionKV

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class StageModel:
    config: Any  # the stage's transformers config (num_hidden_layers = end - start)
    start: int
    end: int
    num_blocks: int  # L of the whole model
    body: nn.Module
    lm_head: nn.Linear | None
    dtype: torch.dtype
    weight_bytes: int
    cache_bytes_per_token: int  # of ONE block
    device: torch.device = torch.device("cpu")

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.end == self.num_blocks

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def new_cache(
        self, max_tokens: int | None = None, start: int | None = None, end: int | None = None
    ) -> SessionKV:
        """An empty KV cache for a session over blocks `[start, end)` (default: all held)."""
        a = self.start if start is None else start
        b = self.end if end is None else end
        kv_heads, head_dim = _kv_geometry(self.config)
        return SessionKV(
            num_layers=b - a,
            kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=self.dtype,
            max_tokens=max_tokens or int(self.config.max_position_embeddings),
            device=self.device,
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: SessionKV,
        position: int,
        start: int | None = None,
        end: int | None = None,
    ) -> torch.Tensor:
        """One session alone: a batch of one (see `forward_batch`)."""
        return self.forward_batch([x], [cache], [position], start, end)[0]

    @torch.inference_mode()
    def forward_batch(
        self,
        xs: Sequence[torch.Tensor],
        caches: Sequence[SessionKV],
        positions: Sequence[int],
        start: int | None = None,
        end: int | None = None,
        min_rows: int = 0,
    ) -> list[torch.Tensor]:
        """Run blocks `[start, end)` (global indices, default: all held) for several sessions
        as one packed batch; session i's new tokens start at `positions[i]`.

        Each `xs[i]` is token ids [1, T_i] when `start == 0`, else hidden states [1, T_i, H].
        Returns, per session, hidden states [1, T_i, H], or when `end == L` the logits of its
        last position [1, V] (float32). Each cache grows (`SessionKV.reserve`) to hold
        `positions[i] + T_i` tokens; on success its `length` is its session's new end (a
        position before the old end rewinds: the step replaces what followed). On failure each
        cache keeps what preceded its step, untouched (`length` = min(old length, position)): a
        retry of the step, or a replay, rebuilds the rest. With `min_rows`, a forward of fewer
        rows is padded to that many (`batch.INVARIANT_MIN_ROWS`).
        """
        lengths = [cache.length for cache in caches]
        try:
            return self._forward_batch(xs, caches, positions, start, end, min_rows)
        except BaseException:
            for cache, n, pos in zip(caches, lengths, positions, strict=True):
                cache.length = min(n, pos)
            raise

    def _forward_batch(
        self,
        xs: Sequence[torch.Tensor],
        caches: Sequence[SessionKV],
        positions: Sequence[int],
        start: int | None,
        end: int | None,
        min_rows: int,
    ) -> list[torch.Tensor]:
        a = (self.start if start is None else start) - self.start
        b = (self.end if end is None else end) - self.start
        counts = [int(x.shape[1]) for x in xs]
        for cache, pos, t in zip(caches, positions, counts, strict=True):
            cache.reserve(pos + t)  # first: growing keeps every valid position, rewound or not
            cache.length = min(cache.length, pos)  # what follows `pos` is replaced
        x = (xs[0] if len(xs) == 1 else torch.cat(list(xs), dim=1)).to(self.device)
        if a == 0 and self.first:
            h = self.body.embed_tokens(x)
        else:
            h = x.to(self.dtype)
        position_ids = torch.cat(
            [torch.arange(p, p + t) for p, t in zip(positions, counts, strict=True)]
        ).unsqueeze(0)
        rows = h.shape[1]
        h, position_ids = _pad_rows(h, min_rows, 1), _pad_rows(position_ids, min_rows, 1)
        position_ids = position_ids.to(self.device)
        packed = Packed(caches, positions, counts, a)
        writer = PackedCache(packed)
        pe = self.body.rotary_emb(h, position_ids=position_ids)
        for i in range(a, b):
            h = self.body.layers[i](
                h,
                attention_mask=None,
                position_embeddings=pe,
                position_ids=position_ids,
                cache=writer,
                use_cache=True,
                tessera_packed=packed,
            )
        for cache, pos, t in zip(caches, positions, counts, strict=True):
            cache.length = pos + t
        h = h[:, :rows]  # the padding rows, if any, go
        if b + self.start < self.num_blocks:
            return list(torch.split(h, counts, dim=1))
        h = self.body.norm(h)  # norm all rows, as the whole model does (bit-exact)
        last = torch.tensor(counts).cumsum(0) - 1
        ends = _pad_rows(h[0, last.to(self.device)], min_rows, 0)  # only last positions: logits
        logits = self.lm_head(ends)[: len(counts)]  # type: ignore[misc]
        return [row.float().cpu() for row in logits.split(1, dim=0)]


def _pad_rows(t: torch.Tensor, rows: int, dim: int) -> torch.Tensor:
    """`t` with zeros appended along `dim` up to `rows` (see `batch.INVARIANT_MIN_ROWS`)."""
    missing = rows - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _kv_geometry(cfg: Any) -> tuple[int, int]:
    """(key/value heads, head size) of one attention layer."""
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    return kv_heads, int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)


def _tensor_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """tensor name -> safetensors file holding it (single file or sharded with an index)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return {k: directory / f for k, f in weight_map.items()}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise InvalidInput("--model", f"{directory}: no *.safetensors files")
    out: dict[str, pathlib.Path] = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                out[k] = f
    return out


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput("--device", f"{name!r} asked for, but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InvalidInput("--device", f"{name!r} is not a torch device") from None


def load_stage(
    directory: pathlib.Path,
    start: int,
    end: int,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
) -> StageModel:
    raw = read_config(directory)
    architecture(raw)  # a clear error for unsupported models before anything heavy
    if dtype not in DTYPES:
        raise InvalidInput("--dtype", f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
    full = AutoConfig.from_pretrained(str(directory))
    n = int(full.num_hidden_layers)
    if not 0 <= start < end <= n:
        raise InvalidInput(
            "--blocks", f"{start}:{end} is not a block range of this {n}-block model"
        )
    cfg = copy.deepcopy(full)
    cfg.num_hidden_layers = end - start
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[start:end]
    torch_dtype = DTYPES[dtype]
    with torch.device("meta"):
        body = AutoModel.from_config(
            cfg, dtype=torch_dtype, attn_implementation=ATTN_IMPLEMENTATION
        )
        lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) if end == n else None
    if start > 0:
        body.embed_tokens = None
    if end < n:
        body.norm = nn.Identity()
    # The rotary inv_freq buffer is not persistent: rebuild it, on the stage's device.
    dev = torch.device(device)
    body.rotary_emb = type(body.rotary_emb)(config=cfg).to(dev)

    files = _tensor_files(directory)
    wanted: dict[str, str] = {}  # stage key -> file key
    for i in range(start, end):
        prefix = f"model.layers.{i}."
        for k in files:
            if k.startswith(prefix):
                wanted[f"layers.{i - start}.{k[len(prefix) :]}"] = k
    if start == 0:
        wanted["embed_tokens.weight"] = "model.embed_tokens.weight"
    if end == n:
        wanted["norm.weight"] = "model.norm.weight"
        head_key = "lm_head.weight" if "lm_head.weight" in files else "model.embed_tokens.weight"
        if not (start == 0 and head_key == "model.embed_tokens.weight"):
            wanted["__lm_head__"] = head_key
    missing = sorted({v for v in wanted.values() if v not in files})
    if missing:
        raise InvalidInput("--model", f"{directory}: tensors missing from the files: {missing[:5]}")

    state: dict[str, torch.Tensor] = {}
    by_file: dict[pathlib.Path, list[tuple[str, str]]] = {}
    for stage_key, file_key in wanted.items():
        by_file.setdefault(files[file_key], []).append((stage_key, file_key))
    for f, keys in by_file.items():
        with safe_open(str(f), "pt") as st:
            for stage_key, file_key in keys:
                # A fresh copy: 64-byte aligned like a normally built model, so GEMV kernels match.
                state[stage_key] = st.get_tensor(file_key).to(dev, torch_dtype).clone()
    head_w = state.pop("__lm_head__", None)
    body.load_state_dict(state, strict=True, assign=True)
    weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
    if lm_head is not None and head_w is not None:
        lm_head.weight = nn.Parameter(head_w, requires_grad=False)
        weight_bytes += head_w.numel() * head_w.element_size()
    elif lm_head is not None:  # tied, and this stage holds the embedding: share one copy
        lm_head.weight = body.embed_tokens.weight
    body.eval()
    kv_heads, head_dim = _kv_geometry(cfg)
    cache_bytes = 2 * kv_heads * head_dim * torch_dtype.itemsize
    return StageModel(
        cfg, start, end, n, body, lm_head, torch_dtype, weight_bytes, cache_bytes, dev
    )
