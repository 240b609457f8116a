"""Split stages reproduce the whole model exactly (tiny random Llama-family models)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tests.unit.datapath_helpers import tiny_model_dir
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from tessera.errors import InvalidInput
from tessera.modelfiles import read_config, sizes
from tessera.worker.blocks import load_stage


def _whole(directory):
    """The whole model with freshly allocated (aligned) parameters, as built in memory."""
    config = AutoConfig.from_pretrained(directory)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = load_file(str(directory / "model.safetensors"))
    missing, _ = model.load_state_dict(state, strict=False)
    assert set(missing) <= {"lm_head.weight"}  # tied: shares the embedding
    model.tie_weights()
    return model


def _run_split(directory, cuts, ids, steps):
    """Logits of the last position after prefill and after each greedy decode step."""
    stages = [load_stage(directory, a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    caches = [s.new_cache() for s in stages]
    out, x, pos = [], ids, 0
    for _ in range(steps + 1):
        h = x
        for s, c in zip(stages, caches, strict=True):
            h = s.forward(h, c, pos)
        out.append(h)
        pos += x.shape[1]
        x = h.argmax(-1, keepdim=True)
    return out


def _run_whole(directory, ids, steps):
    model = _whole(directory)
    cache = DynamicCache(config=model.config)
    out, x = [], ids
    with torch.inference_mode():
        for _ in range(steps + 1):
            logits = model(x, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            out.append(logits)
            x = logits.argmax(-1, keepdim=True)
    return out


@pytest.mark.parametrize(
    ("arch", "cuts"),
    [
        ("llama", [0, 3, 8]),
        ("llama", [0, 2, 5, 8]),
        ("qwen2", [0, 4, 8]),
        ("mistral", [0, 5, 8]),
    ],
)
def test_split_stages_equal_whole_model_prefill_and_10_decode_steps(arch, cuts):
    directory = tiny_model_dir(arch)
    ids = torch.randint(0, 300, (1, 13), generator=torch.Generator().manual_seed(1))
    split = _run_split(directory, cuts, ids, 10)
    whole = _run_whole(directory, ids, 10)
    assert len(split) == 11
    for step, (a, b) in enumerate(zip(split, whole, strict=True)):
        assert torch.equal(a, b), f"step {step}: max diff {(a - b).abs().max().item()}"


def test_a_hop_can_start_inside_a_servers_range():
    """Chains over overlapping ranges: server [3, 8) processes only blocks 5..7 for a session."""
    directory = tiny_model_dir("llama")
    ids = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(2))
    first, second = load_stage(directory, 0, 5), load_stage(directory, 3, 8)
    h = first.forward(ids, first.new_cache(), 0)
    logits = second.forward(h, second.new_cache(), 0, start=5, end=8)
    assert torch.equal(logits, _run_whole(directory, ids, 0)[0])


def test_stage_holds_only_its_own_tensors():
    directory = tiny_model_dir("llama")
    middle = load_stage(directory, 2, 5)
    assert middle.body.embed_tokens is None and middle.lm_head is None
    assert len(middle.body.layers) == 3
    s = sizes(read_config(directory))
    assert middle.weight_bytes == 3 * s.block_bytes  # blocks only, no embedding or head
    first = load_stage(directory, 0, 2)
    assert first.weight_bytes == 2 * s.block_bytes + s.embed_bytes
    last = load_stage(directory, 6, 8)
    assert last.lm_head is not None
    assert last.weight_bytes == 2 * s.block_bytes + s.embed_bytes + 64 * 4  # + final norm
    assert not any(p.is_meta for p in middle.body.parameters())


def test_tied_embedding_is_shared_when_one_stage_holds_both_ends():
    directory = tiny_model_dir("llama", tie=True)
    whole = load_stage(directory, 0, 8)
    assert whole.lm_head.weight.data_ptr() == whole.body.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 300, (1, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(whole.forward(ids, whole.new_cache(), 0), _run_whole(directory, ids, 0)[0])


def test_cache_sizes_match_the_config():
    directory = tiny_model_dir("qwen2")
    stage = load_stage(directory, 0, 8)
    s = sizes(read_config(directory))
    assert stage.cache_bytes_per_token == s.cache_bytes_per_token == 2 * 2 * 16 * 4
    # Qwen2 q/k/v biases are part of the block bytes
    assert 8 * s.block_bytes + s.embed_bytes * 2 + 64 * 4 == stage.weight_bytes


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(
        InvalidInput, match="LlamaForCausalLM.*MistralForCausalLM.*Qwen2ForCausalLM"
    ):
        load_stage(tmp_path, 0, 1)


def test_bad_block_range_is_rejected():
    with pytest.raises(InvalidInput, match="--blocks"):
        load_stage(tiny_model_dir("llama"), 4, 9)
