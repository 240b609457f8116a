"""How often a wire dtype leaves greedy answers unchanged: the measurement behind the docs.

A model split into stages (in this process) answers every prompt greedily, with the hidden
states at every stage boundary going through the real wire path (`tensors.encode_tensor`, then
`tensors.decode_many`) in the dtype under test, in prefill and in every decode step, so that
each later stage builds its KV cache from what the wire delivered, as in a served chain. All
prompts run as one batch; the batch is the same for every dtype, so any difference between two
runs comes from the wire alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import wire_codec
from .blocks import StageModel
from .sampling import Sampling, sample
from .tensors import decode_many, encode_tensor

# Twenty short chat prompts of different kinds (facts, code, lists, stories, arithmetic).
PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three primary colours.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 7?",
    "Write a haiku about autumn.",
    "Translate 'good morning' into Spanish.",
    "Give me a Python function that adds two numbers.",
    "Who wrote Romeo and Juliet?",
    "List the planets of the solar system.",
    "What does a CPU do?",
    "Suggest a name for a black cat.",
    "Why is the sky blue?",
    "Tell me a short joke.",
    "How many days are in a leap year?",
    "Describe a rainy day in two sentences.",
    "What is the boiling point of water in Celsius?",
    "Give one tip for learning a new language.",
    "What is the largest ocean on Earth?",
    "Write the first line of a fairy tale.",
)


@dataclass(frozen=True)
class WireRun:
    answers: tuple[tuple[int, ...], ...]  # each prompt's greedy tokens, cut after the first EOS
    wire_bytes: int  # hidden-state bytes that crossed the stage boundaries


def greedy_answers(
    stages: Sequence[StageModel],
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    wire: str | int | None,
    eos_ids: frozenset[int] = frozenset(),
) -> WireRun:
    """Every prompt's greedy answer of `new_tokens` tokens through `stages` (in block order).
    `wire`: a wire dtype (None: the compute dtype), or an int k for outlier int8 with k channels
    straight through `wire_codec` (k = 0: plain per-token int8, which no link is ever given)."""
    caches = [[s.new_cache() for _ in prompts] for s in stages]
    xs = [torch.tensor([list(p)]) for p in prompts]
    positions = [0] * len(prompts)
    answers: list[list[int]] = [[] for _ in prompts]
    wire_bytes = 0
    for _ in range(new_tokens):
        hs: list[torch.Tensor] = xs
        for i, stage in enumerate(stages):
            hs = stage.forward_batch(hs, caches[i], positions)
            if i < len(stages) - 1:
                hs, sent = _cross(hs, wire, stage)
                wire_bytes += sent
        for j, (logits, x) in enumerate(zip(hs, xs, strict=True)):
            positions[j] += int(x.shape[1])
            token = sample(logits, Sampling(), positions[j]).token
            answers[j].append(token)
        xs = [torch.tensor([[a[-1]]]) for a in answers]
    return WireRun(tuple(_cut(a, eos_ids) for a in answers), wire_bytes)


def _cross(
    hs: list[torch.Tensor], wire: str | int | None, stage: StageModel
) -> tuple[list[torch.Tensor], int]:
    """Hidden states as the next stage receives them, and the bytes they took."""
    if isinstance(wire, int):
        out, sent = [], 0
        for h in hs:
            data = wire_codec.encode(h, wire)
            if data is None:
                raise ValueError(f"outlier int8 with k={wire} cannot carry these values")
            sent += len(data)
            out.append(wire_codec.decode(data, h.shape[1], h.shape[2], wire))
        return out, sent
    encoded = [encode_tensor(h, wire) for h in hs]
    parts = [(d, h["x-dtype"], h["x-shape"], False) for d, h in encoded]
    decoded = decode_many(
        parts, hidden_size=stage.hidden_size, vocab_size=int(stage.config.vocab_size)
    )
    return [_tensor(x) for x in decoded], sum(len(d) for d, _ in encoded)


def _tensor(x: torch.Tensor | Exception) -> torch.Tensor:
    if isinstance(x, Exception):
        raise x
    return x


def _cut(tokens: list[int], eos_ids: frozenset[int]) -> tuple[int, ...]:
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tuple(tokens[: i + 1])
    return tuple(tokens)


def identical(a: WireRun, b: WireRun) -> int:
    """How many prompts got exactly the same answer in both runs."""
    return sum(x == y for x, y in zip(a.answers, b.answers, strict=True))
