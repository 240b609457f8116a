"""Token sampling on the last stage: greedy, temperature and top-p, deterministic per position.

The random draw for the token at position p uses a generator seeded from `(seed, p)` only, so a
step replayed on another chain (after a failover) or retried draws the same token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: spreads (seed, position) pairs apart


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0  # above 0 (the server refuses 0: no token would be left)
    seed: int = 0
    top_logprobs: int = 0  # also list this many most likely tokens with their logprobs


@dataclass(frozen=True)
class Sampled:
    token: int
    logprob: float  # under the model's distribution (before temperature and top-p)
    top: tuple[tuple[int, float], ...] = ()  # (token, logprob), most likely first


def position_seed(seed: int, position: int) -> int:
    return ((seed * _MIX) ^ (position + 1) * 0xBF58476D1CE4E5B9) & 0x7FFF_FFFF_FFFF_FFFF


def sample(logits: torch.Tensor, sampling: Sampling, position: int) -> Sampled:
    """The token, its logprob under the model's distribution and, when asked, the most likely
    tokens', from logits [1, V] or [V]."""
    row = logits.reshape(-1).float()
    logprobs = torch.log_softmax(row, dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if sampling.top_logprobs > 0:
        values, ids = torch.topk(logprobs, min(sampling.top_logprobs, row.numel()))
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    if sampling.temperature <= 0.0:
        token = int(torch.argmax(row).item())
        return Sampled(token, float(logprobs[token].item()), top)
    probs = torch.softmax(row / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_p, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = cumulative - sorted_p >= sampling.top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    gen = torch.Generator().manual_seed(position_seed(sampling.seed, position))
    token = int(torch.multinomial(probs, 1, generator=gen).item())
    return Sampled(token, float(logprobs[token].item()), top)
