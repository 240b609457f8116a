"""The router's edge under start-up and load, on in-process fake stages (issue 9):

- start-up never refuses: the model is listed and `/readyz` is 200 only once a complete chain is
  up; a request that arrives before waits for one (within `max_wait_s`), then 503;
- an honest time to first token: nothing of a streamed answer (status, headers, role chunk)
  goes out before the first token, the role rides on the first content chunk, a failure before
  it is a plain OpenAI error with its status, and the official OpenAI SDK reads the stream;
- Retry-After comes from the live queue, not a constant 1 s.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from tessera.router.generate import retry_after_s

from .datapath_helpers import smollm2_dir
from .router_fakes import MODEL, fake_pool, router_app


def _chat(**extra: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "temperature": 0,
        **extra,
    }


def _error(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    return err


# --- start-up -------------------------------------------------------------------------------


def test_until_a_complete_chain_is_up_the_model_is_unlisted_and_requests_wait_for_it():
    stages = fake_pool()
    for name in ("a", "a2"):  # nobody holds block 0 yet: no complete chain
        stages[name].dead = True
    app = router_app(stages, smollm2_dir(), poll_interval_s=0.05, max_wait_s=10)
    with TestClient(app) as c:
        assert c.get("/v1/models").json()["data"] == []
        assert c.get("/readyz").status_code == 503
        assert c.get("/health").status_code == 503
        assert c.get("/healthz").status_code == 200  # alive: a liveness probe must not kill it

        def come_up() -> None:
            time.sleep(0.5)
            stages["a"].dead = False

        threading.Thread(target=come_up).start()
        t0 = time.monotonic()
        r = c.post("/v1/chat/completions", json=_chat())
        waited = time.monotonic() - t0
        assert r.status_code == 200, r.text  # waited for the chain instead of 503
        assert waited >= 0.4 and r.json()["choices"][0]["message"]["content"]
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL]
        assert c.get("/readyz").status_code == 200


def test_without_a_complete_chain_a_request_gets_503_after_max_wait_s_not_at_once():
    stages = fake_pool()
    for name in ("c", "c2"):
        stages[name].dead = True
    app = router_app(stages, smollm2_dir(), poll_interval_s=0.05, max_wait_s=0.5)
    with TestClient(app) as c:
        t0 = time.monotonic()
        r = c.post("/v1/chat/completions", json=_chat(stream=True))
        waited = time.monotonic() - t0
        _error(r, 503, "no_chain")
        assert 0.4 <= waited < 5
        assert int(r.headers["retry-after"]) >= 1


# --- time to first token --------------------------------------------------------------------


async def _asgi_post(app: object, path: str, body: dict[str, object]) -> list[tuple[float, dict]]:
    """Every ASGI message the app sends for one request, with its time since the request."""
    messages: list[tuple[float, dict]] = []
    delivered = False
    t0 = time.perf_counter()

    async def receive() -> dict[str, object]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        messages.append((time.perf_counter() - t0, message))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"router"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234),
        "server": ("router", 80),
    }
    async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
        await app(scope, receive, send)  # type: ignore[operator]
    return messages


def test_a_streamed_answer_starts_with_its_first_token_not_before_the_prefill():
    prefill_s = 0.3
    stages = fake_pool(a={"step_delay_s": prefill_s})  # every step of a takes 0.3 s
    app = router_app(stages, smollm2_dir())
    messages = asyncio.run(
        _asgi_post(app, "/v1/chat/completions", _chat(stream=True, max_tokens=2))
    )
    start_s, start = messages[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert start_s >= prefill_s  # the status goes out with the first token, not before
    bodies = [(t, m["body"]) for t, m in messages[1:] if m.get("body")]
    first_s, first = bodies[0]
    assert first_s >= prefill_s
    event = json.loads(first.decode().removeprefix("data: "))
    delta = event["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["content"]  # the role rides on content
    later = [json.loads(b.decode()[6:]) for _, b in bodies[1:] if b != b"data: [DONE]\n\n"]
    assert all(e["choices"][0]["delta"]["role"] is None for e in later if e["choices"])


def test_a_failure_before_the_first_token_is_a_plain_http_error_not_a_200_stream():
    # c dies in the prefill and its only stand-in has no room: nothing was streamed yet.
    stages = fake_pool(c={"die_at_step": 0}, c2={"total_slots": 0})
    app = router_app(stages, smollm2_dir(), failover_timeout_s=0.2, max_wait_s=0.2)
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json=_chat(stream=True))
        assert r.headers["content-type"].startswith("application/json")
        _error(r, 503, "no_chain")
        assert not any(s.sessions for s in stages.values() if not s.dead)


def test_the_official_openai_sdk_reads_the_stream_and_the_answer():
    with TestClient(router_app(fake_pool(), smollm2_dir())) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        assert [m.id for m in client.models.list()] == [MODEL]
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        content = [c.choices[0].delta for c in chunks if c.choices]
        assert content[0].role == "assistant" and content[0].content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        streamed = "".join(d.content or "" for d in content)
        whole = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
        )
        assert whole.choices[0].message.content == streamed


# --- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wait_s", "running_s", "ahead", "request_s", "expected"),
    [
        (None, [2.2, 5.0], 0, 6.0, 3),  # the first of our running requests to end
        (None, [2.2, 5.0], 1, 6.0, 5),  # one waits before us: the second to end
        (None, [2.2, 5.0], 2, 6.0, 9),  # a second round: 2.2 + one request (6 s)
        (3.5, [], 0, 6.0, 4),  # WS-RR knows the chain's wait
        (7.5, [2.2, 5.0], 0, 6.0, 8),  # ... and it is longer than the first end
        (None, [], 0, 13.0, 13),  # room held by sessions we cannot see: one request's time
        (None, [], 2, 13.0, 39),  # ... for each request before us and ours
        (None, [], 0, None, 1),  # nothing known: the floor
        (None, [0.01], 0, 1.0, 1),  # at least 1 s
        (float("inf"), [], 0, 1e9, 300),  # capped
    ],
)
def test_retry_after_follows_the_live_queue(wait_s, running_s, ahead, request_s, expected):
    got = retry_after_s(wait_s=wait_s, running_s=running_s, queued_ahead=ahead, request_s=request_s)
    assert got == expected


def test_a_429_says_how_long_a_request_takes_when_room_is_held_by_someone_else():
    # Another client holds all but 5 of c's 15 slots (c needs 10) and c2 has none: no chain has
    # room, and none of our own sessions will free any. A request of 64 tokens takes about
    # 2.1 s on a>b>c (33 ms per token), so Retry-After is that, not 1 s.
    stages = fake_pool(c={"total_slots": 15}, c2={"total_slots": 0})
    stages["c"].sessions["someone-else"] = (10, [])
    with TestClient(router_app(stages, smollm2_dir(), max_wait_s=0)) as c:
        r = c.post("/v1/chat/completions", json=_chat(max_tokens=64))
        _error(r, 429, "no_capacity")
        assert 2 <= int(r.headers["retry-after"]) <= 4
