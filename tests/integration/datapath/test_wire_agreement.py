"""Token agreement of the compressed wire on the packaged SmolLM2 (the figures in docs/wire.md):
20 chat prompts, 32 greedy tokens each, split in two stages at block 15, where the residual
stream carries SmolLM2's 24,891 outlier."""

from __future__ import annotations

import pytest
import torch

from tessera.router.tokenizer import Tokenizer
from tessera.worker.blocks import load_stage
from tessera.worker.wire_agreement import PROMPTS, WireRun, greedy_answers, identical

NEW_TOKENS = 32
CUTS = (0, 15, 30)


@pytest.fixture(scope="module")
def runs(smollm2_dir) -> dict[str, WireRun]:
    torch.set_num_threads(1)  # like a worker process
    directory = smollm2_dir
    tok = Tokenizer(directory)
    prompts = [tok.chat([{"role": "user", "content": p}]) for p in PROMPTS]
    stages = [load_stage(directory, a, b) for a, b in zip(CUTS, CUTS[1:], strict=False)]
    eos = frozenset(tok.eos_ids)
    wires: dict[str, str | int | None] = {
        "exact": None,
        "float16": "float16",
        "int8-outlier": "int8-outlier",
        "plain-int8": 0,  # per-token int8 without outlier channels
    }
    return {k: greedy_answers(stages, prompts, NEW_TOKENS, w, eos) for k, w in wires.items()}


def test_outlier_int8_keeps_90_percent_of_answers_at_055_of_float16_bytes(runs):
    assert len(PROMPTS) == 20
    same = identical(runs["exact"], runs["int8-outlier"])
    ratio = runs["int8-outlier"].wire_bytes / runs["float16"].wire_bytes
    print(f"int8-outlier: {same}/20 identical, {ratio:.3f}x the bytes of float16")
    assert same >= 18
    assert ratio <= 0.55


def test_float16_is_lossless_in_practice_and_plain_int8_is_not(runs):
    fp16 = identical(runs["exact"], runs["float16"])
    plain = identical(runs["exact"], runs["plain-int8"])
    print(f"float16: {fp16}/20 identical; plain per-token int8: {plain}/20")
    assert runs["float16"].wire_bytes * 2 == runs["exact"].wire_bytes  # never fell back
    assert fp16 >= 18
    assert plain < 10  # the outliers spend the int8 range: most answers change
