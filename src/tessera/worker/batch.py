"""Ragged batches over a block range: many sessions' tokens in one forward pass, KV grown in pages.

The sessions of a batch are packed into one sequence `[1, sum(t_i), H]`, so that every linear
layer (projections, MLP, LM head) runs once for the whole batch: that is where batching pays.
Attention is the only per-session part. Hugging Face's decoder layers are used as they are: a
`PackedCache` is passed as their `cache`, and a registered attention function
(`tessera_ragged`) runs Hugging Face's own SDPA attention once per session, on that session's
keys and values, with the mask the whole model would build. So a batch of one is the unsplit
model's computation, and a batch of many equals each session run alone (fp32, to rounding).

This is written here rather than taken from `transformers.generation.continuous_batching`: its
paged cache and attention are built for whole models driven by its own manager (block tables,
one cache for all layers of one model), not for a layer range fed hidden states by the network,
and its SDPA path attends over the whole packed cache with a block mask (a batch of 32
sessions does 32x the attention work on the CPU). vLLM's design is the model: chunked prefill
beside decodes in one step, KV allocated in pages as a session grows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tessera.api.stage import pages_for

ATTN_IMPLEMENTATION = "tessera_ragged"
PAGE_TOKENS = 16  # tokens per KV page: the unit of allocation and of admission
# Batch invariance: one-thread oneDNN/MKL computes a row of a linear layer the same way for
# every batch of at least 16 rows, wherever the row sits, but differently for 1 row and for
# 2-15 rows (measured on this machine: three classes of kernels). Padding every forward to 16
# rows makes a session's numbers independent of who shares its batch. Two threads split the
# reduction for some shapes, so invariance also needs one thread per worker.
INVARIANT_MIN_ROWS = 16


@dataclass
class SessionKV:
    """One session's keys and values for the layers it runs, grown a page multiple at a time.

    `length` is the number of valid positions; positions past it are scratch (a rewind only
    moves `length`). Capacity doubles (in whole pages, capped at `max_tokens`), so growing to
    n tokens copies O(n) in all.
    """

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    max_tokens: int
    page_tokens: int = PAGE_TOKENS
    device: torch.device = torch.device("cpu")
    length: int = 0
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    @property
    def pages_allocated(self) -> int:
        return pages_for(self.capacity, self.page_tokens)

    def reserve(self, tokens: int) -> None:
        """Make room for `tokens` positions (allocating pages on demand)."""
        if tokens <= self.capacity:
            return
        want = max(tokens, 2 * self.capacity)
        cap = min(pages_for(want, self.page_tokens), pages_for(self.max_tokens, self.page_tokens))
        cap = max(cap, pages_for(tokens, self.page_tokens)) * self.page_tokens
        shape = (1, self.kv_heads, cap, self.head_dim)
        old_k, old_v, n = self.keys, self.values, self.length
        fresh = [
            torch.empty(shape, dtype=self.dtype, device=self.device)
            for _ in range(2 * self.num_layers)
        ]
        self.keys, self.values = fresh[: self.num_layers], fresh[self.num_layers :]
        for grown, old in ((self.keys, old_k), (self.values, old_v)):
            for dst, src in zip(grown, old, strict=False):
                dst[:, :, :n] = src[:, :, :n]


@dataclass(frozen=True)
class Packed:
    """Where each session's tokens sit in the packed sequence, and its cache and position."""

    kvs: Sequence[SessionKV]
    positions: Sequence[int]  # position of each session's first new token
    counts: Sequence[int]  # new tokens of each session
    layer_offset: int  # the range's first layer, as an index into each SessionKV

    @functools.cached_property  # read by every layer: computed once per forward
    def bounds(self) -> list[tuple[int, int]]:
        out, at = [], 0
        for t in self.counts:
            out.append((at, at + t))
            at += t
        return out

    @functools.cached_property
    def _masks(self) -> dict[tuple[int, int | None], torch.Tensor | None]:
        return {}

    def mask(self, i: int, window: int | None, device: torch.device) -> torch.Tensor | None:
        """Session i's attention mask, made once per forward (and per sliding window)."""
        key = (i, window)
        if key not in self._masks:
            self._masks[key] = _mask(self.positions[i], self.counts[i], window, device)
        return self._masks[key]


class PackedCache:
    """The `cache` Hugging Face's attention calls: writes each session's new keys and values."""

    def __init__(self, packed: Packed) -> None:
        self.packed = packed

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_: Any, **__: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.packed
        layer = layer_idx - p.layer_offset
        for kv, pos, (a, b) in zip(p.kvs, p.positions, p.bounds, strict=True):
            kv.keys[layer][:, :, pos : pos + b - a] = key[:, :, a:b]
            kv.values[layer][:, :, pos : pos + b - a] = value[:, :, a:b]
        return key, value  # the attention below reads each session's own cache instead


def _mask(past: int, t: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """The mask the whole model would use for `t` new tokens after `past` (None: plain causal)."""
    total = past + t
    if window is None or total <= window:
        if past == 0 or t == 1:
            return None  # SDPA's causal flag (prefill from 0) or no mask (one query)
        q = torch.arange(past, total, device=device).unsqueeze(1)
        return (torch.arange(total, device=device).unsqueeze(0) <= q)[None, None]
    q = torch.arange(past, total, device=device).unsqueeze(1)
    k = torch.arange(total, device=device).unsqueeze(0)
    return ((k <= q) & (k > q - window))[None, None]


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    tessera_packed: Packed,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Hugging Face's SDPA attention, once per session of the packed batch."""
    p = tessera_packed
    layer = int(module.layer_idx) - p.layer_offset  # type: ignore[arg-type]
    outs = []
    bounds = p.bounds
    for i, (kv, pos, (a, b)) in enumerate(zip(p.kvs, p.positions, bounds, strict=True)):
        end = pos + b - a
        k = kv.keys[layer][:, :, :end]
        v = kv.values[layer][:, :, :end]
        mask = p.mask(i, sliding_window, query.device)
        out, _ = sdpa_attention_forward(module, query[:, :, a:b], k, v, mask, **kwargs)
        outs.append(out)
    pad = query.shape[2] - bounds[-1][1]
    if pad > 0:  # rows added for batch invariance: they attend to nothing
        outs.append(outs[0].new_zeros(1, pad, *outs[0].shape[2:]))
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), None


AttentionInterface.register(ATTN_IMPLEMENTATION, ragged_attention)
