"""A batched forward equals each session run alone (tiny random Llama-family models)."""

from __future__ import annotations

import pytest
import torch
from tests.unit.datapath_helpers import tiny_model_dir

from tessera.worker.blocks import load_stage

ATOL = 1e-5


def _prompt(seed: int, n: int) -> torch.Tensor:
    return torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(seed))


def _alone(stages, ids, steps, chunk=None):
    """Logits after prefill (optionally chunked) and after each greedy decode step."""
    caches = [s.new_cache(128) for s in stages]
    out, pos = [], 0
    pieces = [ids] if chunk is None else list(ids.split(chunk, dim=1))
    for piece in pieces:
        h = piece
        for s, c in zip(stages, caches, strict=True):
            h = s.forward(h, c, pos)
        pos += piece.shape[1]
    out.append(h)
    for _ in range(steps):
        h = h.argmax(-1, keepdim=True)
        for s, c in zip(stages, caches, strict=True):
            h = s.forward(h, c, pos)
        pos += 1
        out.append(h)
    return out


@pytest.mark.parametrize(("arch", "cuts"), [("llama", [0, 3, 8]), ("qwen2", [0, 8])])
def test_sessions_joining_and_leaving_mid_batch_equal_each_alone(arch, cuts):
    """Four sessions of different prompt lengths; they join at different steps, one leaves
    early, and prefills share a batch with decodes. Every logit equals the lone run."""
    d = tiny_model_dir(arch)
    stages = [load_stage(d, a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    prompts = {0: _prompt(1, 5), 1: _prompt(2, 17), 2: _prompt(3, 9), 3: _prompt(4, 2)}
    joins = {0: 0, 1: 0, 2: 2, 3: 4}
    steps = {0: 8, 1: 3, 2: 6, 3: 5}  # session 1 leaves after 3 decode steps
    want = {i: _alone(stages, prompts[i], steps[i]) for i in prompts}
    caches = {i: [s.new_cache(128) for s in stages] for i in prompts}
    got: dict[int, list[torch.Tensor]] = {i: [] for i in prompts}
    nxt: dict[int, torch.Tensor] = {}
    pos = dict.fromkeys(prompts, 0)
    for tick in range(12):
        live = [i for i in prompts if joins[i] <= tick and len(got[i]) <= steps[i]]
        if not live:
            break
        xs = [prompts[i] if tick == joins[i] else nxt[i] for i in live]
        hs = xs
        for k, s in enumerate(stages):
            hs = s.forward_batch(hs, [caches[i][k] for i in live], [pos[i] for i in live])
        for i, x, logits in zip(live, xs, hs, strict=True):
            got[i].append(logits)
            pos[i] += x.shape[1]
            nxt[i] = logits.argmax(-1, keepdim=True)
    for i in prompts:
        assert len(got[i]) == len(want[i])
        for a, b in zip(got[i], want[i], strict=True):
            assert torch.allclose(a, b, atol=ATOL, rtol=0), (a - b).abs().max()
            assert int(a.argmax()) == int(b.argmax())


def test_chunked_prefill_equals_one_shot_prefill():
    d = tiny_model_dir("llama")
    stages = [load_stage(d, 0, 5), load_stage(d, 5, 8)]
    ids = _prompt(7, 23)
    one_shot = _alone(stages, ids, 4)
    chunked = _alone(stages, ids, 4, chunk=6)
    for a, b in zip(chunked, one_shot, strict=True):
        assert torch.allclose(a, b, atol=ATOL, rtol=0), (a - b).abs().max()
        assert int(a.argmax()) == int(b.argmax())


def test_sliding_window_mask_is_applied_past_the_window():
    """Mistral with a window shorter than the sequence: batched equals the whole model's rule
    (keys older than the window are masked), checked against a lone run of one stage."""
    d = tiny_model_dir("mistral")
    stage = load_stage(d, 0, 8)
    for layer in stage.body.layers:
        layer.self_attn.config.sliding_window = 4
    ids = _prompt(9, 11)
    whole = stage.forward(ids, stage.new_cache(64), 0)
    chunked_cache = stage.new_cache(64)
    stage.forward(ids[:, :6], chunked_cache, 0)
    last = stage.forward(ids[:, 6:], chunked_cache, 6)
    assert torch.allclose(last, whole, atol=ATOL, rtol=0)


def test_a_rewind_replaces_what_followed():
    d = tiny_model_dir("llama")
    stage = load_stage(d, 0, 8)
    ids = _prompt(11, 10)
    cache = stage.new_cache(64)
    first = stage.forward(ids, cache, 0)
    stage.forward(torch.tensor([[5, 6, 7]]), cache, 10)
    again = stage.forward(ids[:, 4:], cache, 4)  # replay from position 4
    assert cache.length == 10
    assert torch.equal(first, again)


def test_pages_are_allocated_as_the_session_grows():
    d = tiny_model_dir("llama")
    stage = load_stage(d, 0, 8)
    cache = stage.new_cache(100)
    assert cache.pages_allocated == 0
    stage.forward(_prompt(1, 3), cache, 0)
    assert cache.pages_allocated == 1
    for p in range(3, 40):
        stage.forward(torch.tensor([[1]]), cache, p)
    assert cache.length == 40
    assert 3 <= cache.pages_allocated <= 7  # 100 tokens would be 7 pages


def test_padded_forwards_are_bitwise_independent_of_the_batch():
    """With one thread and every forward padded to 16 rows, a session's logits are the same
    bits alone, beside one other session, or beside fifteen (real SmolLM2-sized layers are
    covered by the datapath test; this checks the mechanism on the tiny model)."""
    from tessera.worker.batch import INVARIANT_MIN_ROWS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stage = load_stage(tiny_model_dir("llama"), 0, 8)
        mine = _prompt(21, 7)
        others = [_prompt(30 + i, 3 + i % 4) for i in range(15)]

        def run(company):
            caches = [stage.new_cache(64) for _ in range(len(company) + 1)]
            out = stage.forward_batch(
                [mine, *company], caches, [0] * len(caches), min_rows=INVARIANT_MIN_ROWS
            )[0]
            step = stage.forward_batch(
                [out.argmax(-1, keepdim=True)] + [c[:, :1] for c in company],
                caches,
                [7] + [c.shape[1] for c in company],
                min_rows=INVARIANT_MIN_ROWS,
            )[0]
            return out, step

        alone = run([])
        for company in (others[:1], others[:4], others):
            got = run(company)
            assert torch.equal(got[0], alone[0]) and torch.equal(got[1], alone[1])
    finally:
        torch.set_num_threads(threads)


def test_a_forward_that_fails_keeps_what_preceded_each_step():
    """A failure mid-forward (here in a layer) leaves each cache at min(old length, position),
    with that prefix untouched: retrying the step gives what it would have given at first."""
    stage = load_stage(tiny_model_dir("llama"), 0, 8)
    ids = _prompt(13, 10)
    cache, fresh = stage.new_cache(64), stage.new_cache(64)
    stage.forward(ids, cache, 0)
    stage.forward(ids[:, :6], fresh, 0)
    want = stage.forward(ids[:, 6:], fresh, 6)
    layer = stage.body.layers[5]

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    layer.forward = broken
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            stage.forward(ids[:, 6:], cache, 6)  # a rewind from 10 to 6 that fails
    finally:
        del layer.forward
    assert cache.length == 6
    assert torch.equal(stage.forward(ids[:, 6:], cache, 6), want)
