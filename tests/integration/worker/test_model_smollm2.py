"""The packaged SmolLM2: split greedy output equals single-process transformers generation,
and the router's torch-free tokenizer matches transformers' chat template."""

from __future__ import annotations

import pytest
import torch
from tests.unit.datapath_helpers import smollm2_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from tessera.router.tokenizer import Tokenizer
from tessera.worker.blocks import load_stage
from tessera.worker.sampling import Sampling, sample

NEW_TOKENS = 16
MESSAGES = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)  # like a worker process
    directory = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(directory)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    return directory, ids, out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("cuts", [[0, 15, 30], [0, 9, 21, 30]], ids=["2-stage", "3-stage"])
def test_greedy_split_equals_transformers_generate(reference, cuts):
    directory, ids, expected = reference
    stages = [load_stage(directory, a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    caches = [s.new_cache() for s in stages]
    x, pos, got = ids, 0, []
    for _ in range(NEW_TOKENS):
        h = x
        for s, c in zip(stages, caches, strict=True):
            h = s.forward(h, c, pos)
        pos += x.shape[1]
        token = sample(h, Sampling(), pos).token
        got.append(token)
        x = torch.tensor([[token]])
    assert got == expected


def test_router_tokenizer_matches_transformers_chat_template():
    directory = smollm2_dir()
    ours = Tokenizer(directory)
    theirs = AutoTokenizer.from_pretrained(directory)
    for messages in (
        MESSAGES,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi \u00e9\u4e2d"},
        ],
    ):
        ids = theirs.apply_chat_template(messages, add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert ours.chat(messages) == list(ids)
    assert ours.encode("The sea is") == theirs("The sea is")["input_ids"]
    assert ours.eos_ids == {theirs.eos_token_id}
