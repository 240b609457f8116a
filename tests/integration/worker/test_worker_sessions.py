"""Admission by KV slots, busy with a retry hint, idle expiry, and sampling determinism."""

from __future__ import annotations

import pytest
import torch

from tessera.errors import Busy, InvalidInput, NotFound
from tessera.worker.sampling import Sampling, sample
from tessera.worker.sessions import SessionTable


class FakeKV:
    length = 0
    pages_allocated = 0


def kv(*_args):
    return FakeKV()


def table(total_slots=10, page_tokens=100):
    return SessionTable(
        start_block=4,
        end_block=9,
        max_length=100,
        total_slots=total_slots,
        decode_s_per_block=lambda: 0.01,
        page_tokens=page_tokens,
    )


def test_a_session_reserves_pages_for_what_it_declares_not_the_maximum():
    t = table(total_slots=20, page_tokens=10)
    assert t.open("a", 4, 6, 35, kv, now_s=0.0).slots == 2 * 4  # 2 blocks x ceil(35 / 10)
    assert t.open("b", 4, 9, 10, kv, now_s=0.0).slots == 5 * 1
    assert t.free_slots == 7
    with pytest.raises(Busy, match="needs 10"):
        t.open("c", 4, 9, 20, kv, now_s=0.0)


def test_admission_is_exact_and_busy_carries_a_retry_hint():
    t = table(10)
    t.open("a", 4, 9, 100, kv, now_s=0.0)  # 5 slots
    t.open("b", 6, 9, 50, kv, now_s=0.0)  # 3 slots
    assert t.free_slots == 2
    with pytest.raises(Busy) as exc:
        t.open("c", 4, 7, 100, kv, now_s=0.0)  # needs 3
    # the soonest session (b: 50 tokens left x 3 blocks x 10 ms) could end in 1.5 s
    assert exc.value.retry_after_s == pytest.approx(1.5)
    t.open("d", 7, 9, 100, kv, now_s=0.0)
    assert t.free_slots == 0
    assert t.close("a") and not t.close("a")
    assert t.free_slots == 5


def test_open_checks_range_length_and_duplicates():
    t = table()
    with pytest.raises(InvalidInput, match="start_block"):
        t.open("x", 3, 6, 10, kv, now_s=0)
    with pytest.raises(InvalidInput, match="max_length"):
        t.open("x", 4, 6, 101, kv, now_s=0)
    t.open("x", 4, 6, 10, kv, now_s=0)
    with pytest.raises(InvalidInput, match="already open"):
        t.open("x", 4, 6, 10, kv, now_s=0)


def test_idle_sessions_expire_and_use_refreshes():
    t = table()
    t.open("old", 4, 5, 10, kv, now_s=0.0)
    t.open("busy", 4, 5, 10, kv, now_s=0.0)
    t.get("busy", now_s=50.0)
    assert t.expire(now_s=70.0, idle_timeout_s=60.0) == ["old"]
    with pytest.raises(NotFound):
        t.get("old", now_s=71.0)
    assert len(t) == 1


def test_sampling_is_a_function_of_seed_and_position():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    s = Sampling(temperature=1.0, top_p=0.9, seed=42)
    draws = [sample(logits, s, p).token for p in range(40)]
    assert draws == [sample(logits, s, p).token for p in range(40)]  # replay: same tokens
    assert len(set(draws)) > 1  # but positions differ
    other = [sample(logits, Sampling(1.0, 0.9, 43), p).token for p in range(40)]
    assert other != draws


def test_greedy_and_tiny_top_p_pick_the_argmax_with_its_logprob():
    logits = torch.tensor([[0.1, 3.0, 0.2, -1.0]])
    got = sample(logits, Sampling(), 7)
    assert got.token == 1 and got.top == ()
    assert got.logprob == pytest.approx(torch.log_softmax(logits[0], -1)[1].item())
    assert all(sample(logits, Sampling(1.0, 0.01, s), 3).token == 1 for s in range(20))


def test_top_logprobs_list_the_most_likely_tokens_whatever_token_was_drawn():
    logits = torch.tensor([[0.1, 3.0, 0.2, -1.0, 2.0]])
    expected = torch.log_softmax(logits[0], -1)
    for sampling in (Sampling(top_logprobs=3), Sampling(1.0, 1.0, 5, top_logprobs=3)):
        got = sample(logits, sampling, 2)
        assert [t for t, _ in got.top] == [1, 4, 2]
        assert [lp for _, lp in got.top] == pytest.approx([expected[i].item() for i in (1, 4, 2)])
        assert got.logprob == pytest.approx(expected[got.token].item())
    assert len(sample(logits, Sampling(top_logprobs=20), 0).top) == 5  # at most the vocabulary
