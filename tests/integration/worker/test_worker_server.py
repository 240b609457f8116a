"""The stage protocol over HTTP (in-process), on a tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest
from tests.unit.datapath_helpers import tiny_model_dir
from worker_app import started_worker

from tessera.worker.blocks import load_stage


@pytest.fixture(scope="module")
def first():
    c = started_worker(0, 4)
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def last():
    # weights of 4 blocks + head; room for exactly 2 sessions of 4 blocks at 64 tokens
    # (32 pages of 16 tokens)
    d = tiny_model_dir("llama")
    stage = load_stage(d, 4, 8)
    slot = stage.cache_bytes_per_token * 64
    c = started_worker(4, 8, memory_bytes=stage.weight_bytes + 8 * slot)
    yield c
    c.__exit__(None, None, None)


def tokens(ids):
    return np.asarray([ids], dtype="<i8").tobytes(), {
        "x-dtype": "int64",
        "x-shape": f"1,{len(ids)}",
    }


def open_(c, sid, a, b, n=32):
    return c.post(
        "/v1/sessions", json={"session_id": sid, "start_block": a, "end_block": b, "max_length": n}
    )


def relay(first, last, sid, ids, pos, seed=0, temperature=0.0):
    body, h = tokens(ids)
    r = first.post(f"/v1/sessions/{sid}/step", content=body, headers={**h, "x-position": str(pos)})
    assert r.status_code == 200, r.text
    assert r.headers["x-dtype"] == "float32" and r.headers["x-shape"] == f"1,{len(ids)},64"
    r2 = last.post(
        f"/v1/sessions/{sid}/step",
        content=r.content,
        headers={
            "x-dtype": r.headers["x-dtype"],
            "x-shape": r.headers["x-shape"],
            "x-position": str(pos),
            "x-temperature": str(temperature),
            "x-seed": str(seed),
        },
    )
    assert r2.status_code == 200, r2.text
    return r2.json()


def test_prefill_decode_close_and_replay_gives_the_same_tokens(first, last):
    # 4 blocks x 2 pages of 16 tokens for a 32-token session
    assert open_(first, "s1", 0, 4).json()["slots"] == 8
    assert open_(last, "s1", 4, 8).status_code == 200
    prompt = [5, 17, 42, 7]
    out = [relay(first, last, "s1", prompt, 0, seed=3, temperature=1.0)]
    for _ in range(5):
        pos = len(prompt) + len(out) - 1
        out.append(relay(first, last, "s1", [out[-1]["token"]], pos, seed=3, temperature=1.0))
    assert [o["position"] for o in out] == list(range(4, 10))
    # Replay from position 0 (rewinds the caches): the same sampled tokens, step by step.
    again = [relay(first, last, "s1", prompt, 0, seed=3, temperature=1.0)]
    for o in out[:-1]:
        again.append(relay(first, last, "s1", [o["token"]], o["position"], seed=3, temperature=1.0))
    assert [o["token"] for o in again] == [o["token"] for o in out]
    # Rewind to the middle (a retried decode step): the same token again.
    mid = out[2]
    assert (
        relay(first, last, "s1", [mid["token"]], mid["position"], seed=3, temperature=1.0) == out[3]
    )
    assert first.post("/v1/sessions/s1/close").json() == {"session_id": "s1", "closed": True}
    assert first.post("/v1/sessions/s1/close").json()["closed"] is False
    last.post("/v1/sessions/s1/close")


def test_full_worker_answers_429_with_retry_after(last):
    assert open_(last, "f1", 4, 8, 64).status_code == 200
    assert open_(last, "f2", 4, 8, 64).status_code == 200
    state = last.get("/state").json()
    assert state["total_slots"] == 32 and state["free_slots"] == 0 and state["active_sessions"] == 2
    r = open_(last, "f3", 4, 8, 64)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "busy" and r.json()["retry_after_s"] > 0
    last.post("/v1/sessions/f1/close")
    assert open_(last, "f3", 6, 8, 64).status_code == 200
    for sid in ("f2", "f3"):
        last.post(f"/v1/sessions/{sid}/close")


def test_protocol_errors(first):
    body, h = tokens([1, 2])
    assert first.post("/v1/sessions/nope/step", content=body, headers=h).status_code == 404
    assert open_(first, "e1", 0, 4).status_code == 200
    ahead = first.post("/v1/sessions/e1/step", content=body, headers={**h, "x-position": "3"})
    assert ahead.status_code == 409 and ahead.json()["error"]["code"] == "position_ahead"
    short = first.post("/v1/sessions/e1/step", content=body[:-1], headers=h)
    assert short.status_code == 400 and "bytes" in short.json()["error"]["message"]
    wrong = first.post("/v1/sessions/e1/step", content=body, headers={**h, "x-dtype": "float32"})
    assert wrong.status_code == 400
    big, hb = tokens([1, 999])
    assert first.post("/v1/sessions/e1/step", content=big, headers=hb).status_code == 400
    too_long, hl = tokens(list(range(40)))
    assert first.post("/v1/sessions/e1/step", content=too_long, headers=hl).status_code == 400
    assert open_(first, "e2", 4, 6).status_code == 400  # not inside [0, 4)
    assert first.post("/v1/sessions", json={"session_id": "x"}).status_code == 400
    first.post("/v1/sessions/e1/close")


def test_state_health_and_metric_names(first):
    state = first.get("/state").json()
    assert state["ready"] and state["start_block"] == 0 and state["end_block"] == 4
    assert state["num_blocks"] == 8 and state["decode_s_per_block"] > 0
    assert first.get("/healthz").status_code == 200
    text = first.get("/metrics").text
    for name in (
        "tessera_stage_sessions_active",
        "tessera_stage_free_slots",
        "tessera_stage_step_seconds",
        "tessera_stage_blocks",
    ):
        assert name in text


def _steps(c, steps):
    """POST /v1/steps: [(sid, ids or (bytes, dtype, shape), position, extra)] -> (status, results)."""
    from tessera.api import stage as wire

    items, payloads = [], []
    for sid, x, pos, extra in steps:
        data, dtype, shape = x if isinstance(x, tuple) else (*tokens(x)[:1], "int64", f"1,{len(x)}")
        items.append(
            wire.StepIn(
                session_id=sid, position=pos, dtype=dtype, shape=shape, nbytes=len(data), **extra
            )
        )
        payloads.append(data)
    r = c.post("/v1/steps", content=wire.pack(wire.StepBatch(steps=items), payloads))
    if r.status_code != 200:
        return r.status_code, r.json()
    head, payload = wire.unpack(r.content)
    results = wire.StepResults.model_validate_json(head).results
    return 200, list(
        zip(results, wire.split_payload(payload, [x.nbytes for x in results]), strict=True)
    )


def test_one_message_carries_many_sessions_and_each_gets_its_own_result(first, last):
    prompts = {"m1": [5, 17, 42], "m2": [9, 8, 7, 6, 5, 4], "m3": [1]}
    for sid in prompts:
        assert open_(first, sid, 0, 4).status_code == 200
        assert open_(last, sid, 4, 8).status_code == 200
    alone = {sid: relay(first, last, sid, ids, 0) for sid, ids in prompts.items()}
    # The same prefills again (a rewind to 0), all in one message per stage, plus a bad step.
    status, hidden = _steps(
        first, [(sid, ids, 0, {}) for sid, ids in prompts.items()] + [("nope", [1], 0, {})]
    )
    assert status == 200 and [r.status for r, _ in hidden] == [200, 200, 200, 404]
    status, out = _steps(
        last,
        [
            (sid, (data, r.dtype, r.shape), 0, {"temperature": 0.0})
            for sid, (r, data) in zip(prompts, hidden, strict=False)
        ],
    )
    assert status == 200
    assert [r.token.model_dump() for r, _ in out] == [alone[s] for s in prompts]
    # A step ahead of its session fails alone (409); the others in the message still run.
    status, mixed = _steps(first, [("m1", [3], 3, {}), ("m2", [3], 99, {})])
    assert [r.status for r, _ in mixed] == [200, 409]
    assert mixed[1][0].error.code == "position_ahead"
    for sid in prompts:
        first.post(f"/v1/sessions/{sid}/close")
        last.post(f"/v1/sessions/{sid}/close")


def test_out_of_range_sampling_is_a_400_naming_it_and_top_logprobs_come_back(first, last):
    assert open_(first, "samp", 0, 4).status_code == 200
    assert open_(last, "samp", 4, 8).status_code == 200
    status, hidden = _steps(first, [("samp", [5, 17, 42], 0, {})])
    r, data = hidden[0]
    x = (data, r.dtype, r.shape)
    bad = [
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"temperature": -1.0},
        {"top_logprobs": 21},
    ]
    status, out = _steps(last, [("samp", x, 0, extra) for extra in bad])
    assert status == 200 and [o.status for o, _ in out] == [400] * len(bad)
    for (o, _), name in zip(out, ["top-p", "top-p", "temperature", "logprobs"], strict=True):
        assert name in o.error.message and o.error.code == "invalid_request"
    # The single-step route: a 400 too, not a 500 with a traceback.
    r = last.post(
        "/v1/sessions/samp/step",
        content=data,
        headers={"x-dtype": r.dtype, "x-shape": r.shape, "x-top-p": "0"},
    )
    assert r.status_code == 400 and "x-top-p" in r.json()["error"]["message"]
    status, out = _steps(last, [("samp", x, 0, {"top_logprobs": 3}), ("samp", x, 0, {})])
    with_top, without = out[0][0].token, out[1][0].token
    assert without.top_logprobs is None and len(with_top.top_logprobs) == 3
    assert with_top.top_logprobs[0].token == with_top.token  # greedy: the most likely
    assert with_top.top_logprobs[0].logprob == with_top.logprob == without.logprob
    logprobs = [t.logprob for t in with_top.top_logprobs]
    assert logprobs == sorted(logprobs, reverse=True)
    first.post("/v1/sessions/samp/close")
    last.post("/v1/sessions/samp/close")


def test_a_step_gets_its_output_in_the_wire_dtype_it_asks_for(first, last):
    """The first stage answers in float16 or outlier int8 when asked; the last stage takes
    either as its input (the router relays the bytes untouched)."""
    assert open_(first, "w1", 0, 4).status_code == 200
    assert open_(last, "w1", 4, 8).status_code == 200
    prompt = [5, 17, 42, 7, 9]
    sizes = {}
    for wire_dtype in ("float32", "float16", "int8-outlier"):
        extra = {"wire_dtype": wire_dtype}
        status, hidden = _steps(first, [("w1", prompt, 0, extra)])
        (result, data) = hidden[0]
        assert status == 200 and result.dtype == wire_dtype and result.shape == "1,5,64"
        sizes[wire_dtype] = len(data)
        status, out = _steps(last, [("w1", (data, result.dtype, result.shape), 0, {})])
        assert status == 200 and out[0][0].status == 200 and out[0][0].token is not None
    assert sizes["float16"] * 2 == sizes["float32"]
    assert sizes["int8-outlier"] < sizes["float16"]
    first.post("/v1/sessions/w1/close")
    last.post("/v1/sessions/w1/close")


def test_a_broken_message_is_a_400_naming_the_body(first):
    r = first.post("/v1/steps", content=b"\x10\x00")
    assert r.status_code == 400 and "body" in r.json()["error"]["message"]
    from tessera.api import stage as wire

    batch = wire.StepBatch(
        steps=[wire.StepIn(session_id="a", position=0, dtype="int64", shape="1,1", nbytes=8)]
    )
    r = first.post("/v1/steps", content=wire.pack(batch, [b"\x00" * 4]))  # 4 bytes, not 8
    assert r.status_code == 400 and "payload" in r.json()["error"]["message"]


def test_pages_come_back_after_a_thousand_sessions(first):
    """Open, step and close 1,000 sessions (some never stepped, some left to expire): every
    reserved and allocated page is free again, and admission never went past the total."""
    before = first.get("/state").json()
    assert before["allocated_slots"] == 0
    for i in range(1000):
        sid = f"leak-{i}"
        assert open_(first, sid, 0, 4, n=48).status_code == 200
        if i % 3:
            status, res = _steps(first, [(sid, [i % 300, 1, 2], 0, {})])
            assert res[0][0].status == 200
        if i % 10 == 0:
            state = first.get("/state").json()
            assert 0 <= state["free_slots"] <= state["total_slots"]
            assert state["allocated_slots"] <= state["total_slots"] - state["free_slots"]
        first.post(f"/v1/sessions/{sid}/close")
    after = first.get("/state").json()
    assert after["free_slots"] == after["total_slots"] == before["total_slots"]
    assert after["allocated_slots"] == 0 and after["active_sessions"] == 0
