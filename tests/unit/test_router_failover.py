"""Mid-stream failover on in-process fake stages: the replayed answer equals the undisturbed
one whichever stage dies and whenever (prefill or decode), and the router gives up cleanly
(an error event, or 503) when no replacement chain exists."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from .datapath_helpers import smollm2_dir
from .router_fakes import MODEL, fake_pool, router_app

NEW = 12


def _body(stream: bool, **extra):
    return {
        "model": MODEL,
        "prompt": "The sea is",
        "max_tokens": NEW,
        "temperature": 0,
        "stream": stream,
        **extra,
    }


def _streamed(client: TestClient, **extra) -> tuple[str, list[dict], str]:
    with client.stream("POST", "/v1/completions", json=_body(True, **extra)) as r:
        assert r.status_code == 200
        chain = r.headers["x-tessera-chain"]
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    return text, chunks, chain


def _failovers(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("tessera_failovers_total "):
            return float(line.split()[1])
    raise AssertionError("no tessera_failovers_total")


@pytest.fixture(scope="module")
def reference() -> dict[str, str]:
    """The undisturbed answers (greedy and seeded sampling) on the preferred chain."""
    with TestClient(router_app(fake_pool(), smollm2_dir())) as c:
        greedy, _, chain = _streamed(c)
        seeded, _, _ = _streamed(c, temperature=0.8, seed=7)
    assert chain == "a>b>c"
    return {"greedy": greedy, "seeded": seeded}


# die_at_step counts the stage's own steps: 0 = dies in the prefill, 5 = in the 5th decode step.
@pytest.mark.parametrize(
    ("victim", "die_at_step"),
    [("a", 4), ("b", 6), ("c", 9), ("a", 0), ("b", 0), ("c", 0), ("c", NEW - 1)],
)
def test_a_stage_dying_mid_stream_does_not_change_the_text(reference, victim, die_at_step):
    stages = fake_pool(**{victim: {"die_at_step": die_at_step}})
    with TestClient(router_app(stages, smollm2_dir(), down_s=60)) as c:
        text, chunks, chain = _streamed(c, stream_options={"include_usage": True})
        assert text == reference["greedy"]
        assert chunks[-1]["usage"]["completion_tokens"] == NEW
        assert stages[victim].dead
        if die_at_step == 0:  # the headers go out with the first token: after the failover
            assert victim not in chain.split(">")
        else:
            assert chain == "a>b>c"
        assert _failovers(c) == 1
        assert all(not s.sessions for s in stages.values() if not s.dead)  # all closed


def test_seeded_sampling_survives_a_failover(reference):
    stages = fake_pool(b={"die_at_step": 5})
    with TestClient(router_app(stages, smollm2_dir())) as c:
        text, _, _ = _streamed(c, temperature=0.8, seed=7)
    assert text == reference["seeded"]


def test_non_streaming_request_fails_over_and_names_the_final_chain(reference):
    stages = fake_pool(c={"die_at_step": 3})
    with TestClient(router_app(stages, smollm2_dir())) as c:
        r = c.post("/v1/completions", json=_body(False))
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == reference["greedy"]
    assert r.headers["x-tessera-chain"] == "a>b>c2"


def test_two_failures_in_one_request(reference):
    stages = fake_pool(a={"die_at_step": 2}, c={"die_at_step": 6})
    with TestClient(router_app(stages, smollm2_dir())) as c:
        text, _, _ = _streamed(c)
        assert text == reference["greedy"] and _failovers(c) == 2


def test_a_stage_that_lost_the_session_is_replayed_without_being_marked_down(reference):
    stages = fake_pool()
    with TestClient(router_app(stages, smollm2_dir())) as c:
        original = stages["b"].step

        async def forgetful(session_id, x, position, sampling, wire_dtype=None):
            if stages["b"].steps == 4:  # as if b restarted: our session is gone
                stages["b"].sessions.clear()
            return await original(session_id, x, position, sampling, wire_dtype)

        stages["b"].step = forgetful
        text, _, chain = _streamed(c)
        assert text == reference["greedy"] and chain == "a>b>c"
        assert "b" in c.get("/health").json()["stages_up"]


def test_no_replacement_chain_ends_the_stream_with_an_error_event_then_done():
    stages = fake_pool(b={"die_at_step": 3}, a2={"total_slots": 0})  # b's only stand-in is full
    app = router_app(stages, smollm2_dir(), failover_timeout_s=0.3, max_wait_s=0.3)
    with TestClient(app) as c:
        with c.stream("POST", "/v1/completions", json=_body(True)) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["type"] == "service_unavailable" and "no other chain" in err["message"]
        r = c.post("/v1/completions", json=_body(False))  # b is down now: 429 or 503, not a hang
        assert r.status_code in (429, 503) and set(r.json()["error"]) >= {"message", "type"}
    assert all(not s.sessions for n, s in stages.items() if n != "b")


def test_non_streaming_gets_503_with_an_openai_body_when_failover_is_impossible():
    stages = fake_pool(c={"die_at_step": 2}, c2={"total_slots": 0})
    with TestClient(router_app(stages, smollm2_dir(), failover_timeout_s=0.3)) as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                **{k: v for k, v in _body(False).items() if k != "prompt"},  # chat has no prompt
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "no_chain"
