"""The batching loop: decodes are never stalled by a long prompt, steps fail alone."""

from __future__ import annotations

import torch
from tests.unit.datapath_helpers import tiny_model_dir

from tessera.errors import NotFound
from tessera.worker.blocks import load_stage
from tessera.worker.sampling import Sampling
from tessera.worker.scheduler import BatchStats, PositionAhead, Scheduler, Step
from tessera.worker.sessions import SessionTable


def _setup(max_batch_tokens=64):
    stage = load_stage(tiny_model_dir("llama"), 0, 8)
    table = SessionTable(
        start_block=0,
        end_block=8,
        max_length=512,
        total_slots=10_000,
        decode_s_per_block=lambda: 0.001,
        page_tokens=16,
    )
    batches: list[BatchStats] = []
    sched = Scheduler(stage, max_batch_tokens=max_batch_tokens, on_batch=batches.append)
    return stage, table, sched, batches


def _step(table, sid, ids, position, results):
    session = table.get(sid, 0.0)
    return Step(
        session, torch.tensor([ids]), position, Sampling(), lambda r: results.append((sid, r))
    )


def test_a_long_prompt_is_chunked_and_decodes_run_in_every_forward():
    stage, table, sched, batches = _setup(max_batch_tokens=64)
    for sid in ("short", "long"):
        table.open(sid, 0, 8, 400, stage.new_cache, 0.0)
    results: list = []
    sched.submit(_step(table, "short", [1, 2, 3], 0, results))
    sched.run_once()  # the short prompt alone
    long_prompt = list(range(1, 300))
    sched.submit(_step(table, "long", long_prompt, 0, results))
    position = 3
    while not any(sid == "long" for sid, _ in results):
        token = results[-1][1][0].token if results[-1][0] == "short" else 1
        sched.submit(_step(table, "short", [token], position, results))
        sched.run_once()
        position += 1
    chunks = [b for b in batches[1:] if b.tokens > b.sessions]
    assert len(chunks) == -(-299 // 63)  # 63 prefill tokens beside one decode per forward
    assert all(b.tokens <= 64 and b.sessions == 2 for b in chunks)
    assert sum(1 for sid, _ in results if sid == "short") == 1 + len(chunks)
    # The chunked prompt equals a one-shot prefill of the same prompt.
    alone = stage.forward(torch.tensor([long_prompt]), stage.new_cache(400), 0)
    got = next(r for sid, r in results if sid == "long")[0]
    assert got.token == int(alone.argmax())


def test_a_step_that_cannot_run_fails_alone():
    stage, table, sched, _ = _setup()
    table.open("a", 0, 8, 64, stage.new_cache, 0.0)
    table.open("b", 0, 8, 64, stage.new_cache, 0.0)
    results: list = []
    sched.submit_many(
        [_step(table, "a", [1, 2], 0, results), _step(table, "b", [1, 2], 5, results)]
    )
    table.close("a")  # closed after queueing: its step fails NotFound, b's runs or fails alone
    table.open("c", 0, 8, 64, stage.new_cache, 0.0)
    sched.submit(_step(table, "c", [4, 5, 6], 0, results))
    sched.run_once()
    by = dict(results)
    assert isinstance(by["a"], NotFound)
    assert isinstance(by["b"], PositionAhead)
    assert by["c"][0].position == 3
