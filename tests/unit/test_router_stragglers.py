"""Stragglers: the learned hop deadline, the adaptive hedge share and budget (pure), and a frozen
stage worked around on in-process fake stages (hedged on a chain without it, identical text)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from tessera.router.stragglers import (
    MIN_SAMPLES,
    HedgeBudget,
    StageTimes,
    StragglerPolicy,
    hedge_share,
)

from .datapath_helpers import smollm2_dir
from .router_fakes import MODEL, fake_pool, router_app

POLICY = StragglerPolicy(floor_s=0.5, multiple=4.0, hedge_budget=0.1)


def test_no_deadline_until_enough_hops_then_a_multiple_of_the_p90_above_the_floor():
    times = StageTimes()
    for _ in range(MIN_SAMPLES - 1):
        times.record(1, 0.2)
    assert times.deadline_s(1, POLICY) is None
    times.record(1, 0.2)
    assert times.deadline_s(1, POLICY) == pytest.approx(0.8)
    fast = StageTimes()
    for _ in range(MIN_SAMPLES):
        fast.record(1, 0.01)
    assert fast.deadline_s(1, POLICY) == POLICY.floor_s  # jitter never goes under the floor


def test_a_prefill_deadline_grows_with_its_tokens():
    times = StageTimes()
    for _ in range(MIN_SAMPLES):
        times.record(1, 0.2)
    unknown = times.deadline_s(64, POLICY)
    assert unknown is not None and unknown > times.deadline_s(1, POLICY)  # type: ignore[operator]
    for _ in range(MIN_SAMPLES):
        times.record(100, 1.0)  # 10 ms a token
    assert times.deadline_s(400, POLICY) == pytest.approx(4.0 * 0.01 * 400)


def test_spread_and_hedge_share_follow_the_tail():
    even = StageTimes()
    for _ in range(20):
        even.record(1, 0.1)
    assert even.spread() == pytest.approx(1.0) and hedge_share(even.spread()) == 0.0
    tail = StageTimes()
    for i in range(20):
        tail.record(1, 0.5 if i % 4 == 0 else 0.1)  # a quarter of hops 5x slower
    assert tail.spread() == pytest.approx(5.0) and hedge_share(tail.spread()) == 1.0
    assert 0.0 < hedge_share(2.5) < 1.0


def test_the_budget_bounds_the_extra_work_and_the_share_spaces_the_hedges():
    budget = HedgeBudget()
    assert not budget.should_hedge(1.0, 10.0, POLICY)  # no work yet: no room in the budget
    hedged = 0
    for _ in range(1000):
        budget.add_work(100.0)  # one request's useful work
        if budget.should_hedge(1.0, 50.0, POLICY):
            hedged += 1
            budget.add_work(50.0)
            budget.add_extra(50.0)  # every hedge lost: the worst case
    assert budget.extra_share() <= POLICY.hedge_budget
    assert hedged > 150  # the budget is used, not just respected
    half = HedgeBudget(work=1e9)
    picks = [half.should_hedge(0.5, 1.0, POLICY) for _ in range(10)]
    assert sum(picks) == 5  # every second request at a share of 0.5
    assert not HedgeBudget(work=1e9).should_hedge(0.0, 1.0, POLICY)


def _streamed(client: TestClient) -> tuple[str, str]:
    body = {"model": MODEL, "prompt": "The sea is", "max_tokens": 12, "temperature": 0}
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        chain = r.headers["x-tessera-chain"]
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    return "".join(c["choices"][0]["text"] for c in chunks if c.get("choices")), chain


def _metric(client: TestClient, prefix: str) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))


@pytest.mark.parametrize("victim", ["a", "c"])
def test_a_frozen_stage_is_hedged_around_with_identical_text_and_left_suspect(victim):
    no_hedging = StragglerPolicy(floor_s=0.3, hedge_first_token=False)
    stages = fake_pool(**{victim: {"step_delay_s": 0.002}})
    with TestClient(router_app(stages, smollm2_dir(), stragglers=no_hedging)) as c:
        reference, chain = _streamed(c)  # also teaches the router the stages' hop times
        assert chain == "a>b>c"
        stages[victim].freeze_at_step = stages[victim].steps + 3
        try:
            text, _ = _streamed(c)
            assert stages[victim].frozen  # it froze mid-stream and was never waited out
            assert text == reference
            assert _metric(c, 'tessera_hedges_total{reason="straggler",winner="hedge"}') == 1
            assert victim not in c.get("/health").json()["stages_up"]  # suspect until a probe
            again, chain = _streamed(c)  # new requests avoid it
            assert again == reference and victim not in chain.split(">")
        finally:
            stages[victim].thaw()
        assert all(not s.sessions for n, s in stages.items() if n != victim)


def test_first_tokens_are_hedged_when_step_times_spread_and_the_loser_is_closed():
    stages = fake_pool()
    policy = StragglerPolicy(floor_s=5.0, hedge_budget=1.0)
    with TestClient(router_app(stages, smollm2_dir(), stragglers=policy)) as c:
        reference, _ = _streamed(c)
        chains = c.app.state.tessera.chains  # type: ignore[attr-defined]
        for i in range(40):  # a stage whose hops spread widely: hedging pays
            chains.stragglers.times("b").record(1, 0.5 if i % 3 == 0 else 0.05)
        text, _ = _streamed(c)
        assert text == reference
        assert _metric(c, 'tessera_hedges_total{reason="first_token"') == 1
        assert _metric(c, "tessera_hedge_extra_work_block_tokens_total") > 0
        assert _metric(c, "tessera_stage_work_block_tokens_total") > 0
        assert all(not s.sessions for s in stages.values())  # winner and loser both closed


def test_a_single_holder_that_dies_and_restarts_finishes_the_answer():
    """No replica: the failover waits, the restarted stage's first good probe ends its down
    mark (no fixed down time), and the answer is replayed there: identical text."""
    stages = fake_pool()
    with TestClient(router_app(stages, smollm2_dir())) as c:
        reference, chain = _streamed(c)
        assert chain == "a>b>c"
        for spare in ("a2", "c2"):
            stages[spare].dead = True  # a pool with one holder per block
        victim = stages["b"]
        victim.die_at_step = victim.steps + 4

        def restart() -> None:  # like `tessera up`: a new process, no sessions
            while not victim.dead:
                time.sleep(0.01)
            time.sleep(0.5)
            victim.sessions.clear()
            victim.die_at_step = None
            victim.dead = False

        restarter = threading.Thread(target=restart)
        restarter.start()
        text, chain = _streamed(c)
        restarter.join()
        assert text == reference and chain == "a>b>c"
        assert _metric(c, "tessera_failovers_total") == 1


def test_a_stalled_event_loop_is_not_taken_for_a_straggler():
    async def scenario() -> list[str]:
        from tessera.router.chainrun import _Watchdog

        fired: list[str] = []
        watchdog = _Watchdog("b", 0.05, 0.2, fired.append)
        time.sleep(0.5)  # the loop stalls past the deadline (the stage did nothing wrong)
        await asyncio.sleep(0.1)
        stalled = list(fired)
        await asyncio.sleep(0.3)  # the grace ends: now it is the stage
        watchdog.cancel()
        return [*stalled, "|", *fired]

    assert asyncio.run(scenario()) == ["|", "b"]
