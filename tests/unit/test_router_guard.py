"""The router's front door and admission on in-process fake stages: API keys (hashed, several,
reloaded), refusals as OpenAI bodies (401, 413, 415, 400 for bad JSON), the bounded queue (429
with Retry-After), and prompts never written to any log, even at DEBUG."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import httpx
import pytest
from fastapi.testclient import TestClient

from tessera.router.auth import ApiKeys, parse_keys

from .datapath_helpers import smollm2_dir
from .router_fakes import MODEL, fake_pool, router_app


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


def test_key_files_hold_plain_keys_or_sha256_hashes_and_comments():
    hashed = hashlib.sha256(b"k2").hexdigest()
    digests = parse_keys(f"# team keys\nk1\n\n  sha256:{hashed}  \n")
    assert digests == [hashlib.sha256(b"k1").digest(), bytes.fromhex(hashed)]


def test_keys_reload_when_the_file_changes_and_survive_an_unreadable_file(tmp_path):
    now = [0.0]
    path = tmp_path / "keys"
    path.write_text("old\n")
    keys = ApiKeys(path, check_interval_s=1.0, clock=lambda: now[0])
    assert keys.check("old") and not keys.check("new") and not keys.check(None)
    path.write_text("new\nother\n")
    assert keys.check("old")  # not re-read before the interval
    now[0] = 1.5
    assert keys.check("new") and keys.check("other") and not keys.check("old")
    path.unlink()
    now[0] = 3.0
    assert keys.check("new")  # a missing file keeps the keys it had
    path.write_text("")
    now[0] = 4.5
    assert not keys.check("new") and len(keys) == 0  # an empty file refuses everyone


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text("sk-one\nsk-two\n")
    with TestClient(router_app(fake_pool(), smollm2_dir(), api_keys_file=keys)) as c:
        yield c


def _chat(**extra):
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        **extra,
    }


def test_every_v1_route_needs_a_key_but_health_metrics_and_docs_do_not(keyed):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        r = keyed.request(method, path, json=_chat())
        err = _error(r, 401, "invalid_api_key")
        assert "provide" in err["message"] and r.headers["www-authenticate"] == "Bearer"
        bad = keyed.request(method, path, json=_chat(), headers={"authorization": "Bearer x"})
        assert "Incorrect" in _error(bad, 401, "invalid_api_key")["message"]
        basic = keyed.request(method, path, json=_chat(), headers={"authorization": "Basic x"})
        _error(basic, 401, "invalid_api_key")
    for key in ("sk-one", "sk-two"):
        r = keyed.post(
            "/v1/chat/completions", json=_chat(), headers={"authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200
    for path in ("/health", "/metrics", "/openapi.json"):
        assert keyed.get(path).status_code == 200
    doc = keyed.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/completions"]["post"]["security"] == [{"bearer": []}]


@pytest.fixture(scope="module")
def open_router():
    with TestClient(router_app(fake_pool(), smollm2_dir(), max_body_bytes=10_000)) as c:
        yield c


def test_client_mistakes_are_4xx_openai_bodies(open_router):
    c = open_router
    _error(
        c.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    _error(
        c.post(
            "/v1/completions",
            content=b"prompt=hi",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        415,
        "unsupported_media_type",
    )
    _error(
        c.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 20_000}),
        413,
        "request_too_large",
    )
    _error(c.post("/v1/completions", json=[1, 2]), 400)
    _error(c.post("/v1/completions", json={"model": MODEL, "prompt": {"a": 1}}), 400)
    _error(c.post("/v1/completions", json={"model": MODEL, "prompt": [[1, 2]]}), 400)
    _error(c.post("/v1/completions", json={"model": MODEL, "prompt": [-1]}), 400)
    _error(c.post("/v1/completions", json={"model": MODEL, "prompt": [10**9]}), 400)
    _error(c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "echo": True}), 400)
    _error(c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": "3"}), 400)
    nan = b'{"model": "%s", "prompt": "hi", "temperature": NaN}' % MODEL.encode()
    r = c.post("/v1/completions", content=nan, headers={"content-type": "application/json"})
    assert _error(r, 400)["param"] == "temperature"
    _error(
        c.post(
            "/v1/chat/completions",
            json=_chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
        ),
        400,
    )
    _error(c.post("/v1/chat/completions", json=_chat(model="other")), 404, "model_not_found")
    _error(c.get("/v1/nope"), 404)
    _error(c.delete("/v1/models"), 405)
    # Not text (a lone surrogate is a valid JSON escape, not a character): 400, not a crash.
    r = c.post(
        "/v1/completions",
        content=b'{"model": "%s", "prompt": "a\\ud800b", "max_tokens": 2}' % MODEL.encode(),
        headers={"content-type": "application/json"},
    )
    assert _error(r, 400)["param"] == "prompt"


def test_the_queue_is_bounded_and_overflow_gets_429_with_retry_after():
    # Room for one request at a time (a holds 10 KV slots, its stand-in a2 none); each request
    # takes about 0.25 s; at most 2 may wait, for at most 5 s.
    stages = fake_pool(a={"total_slots": 10, "step_delay_s": 0.02}, a2={"total_slots": 0})
    app = router_app(stages, smollm2_dir(), max_queue=2, max_wait_s=5)

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
                body = {"model": MODEL, "prompt": "hi", "max_tokens": 10, "temperature": 0}
                return await asyncio.gather(
                    *(client.post("/v1/completions", json=body, timeout=30) for _ in range(5))
                )

    results = asyncio.run(run())
    ok = [r for r in results if r.status_code == 200]
    busy = [r for r in results if r.status_code == 429]
    assert len(ok) == 3 and len(busy) == 2
    assert len({r.json()["choices"][0]["text"] for r in ok}) == 1
    for r in busy:
        assert int(r.headers["retry-after"]) >= 1
        assert "waiting" in _error(r, 429, "no_capacity")["message"]
    assert stages["a"].max_used <= 10 and not stages["a"].sessions


def test_prompts_are_never_logged_even_at_debug(caplog):
    marker = "Quetzalcoatl-umbrella-9431"
    caplog.set_level(logging.DEBUG)
    stages = fake_pool(b={"die_at_step": 3})  # a failover logs the most
    with TestClient(router_app(stages, smollm2_dir())) as c:
        for path, body in (
            ("/v1/completions", {"model": MODEL, "prompt": marker, "max_tokens": 6}),
            (
                "/v1/chat/completions",
                _chat(messages=[{"role": "user", "content": marker}], stream=True),
            ),
            ("/v1/completions", {"model": MODEL, "prompt": marker, "max_tokens": 10**6}),
        ):
            c.post(path, json=body)
    text = caplog.text + json.dumps([r.args for r in caplog.records], default=str)
    assert "re-routing" in text and len(caplog.records) > 3  # logging was on ...
    assert marker not in text  # ... and never saw the prompt
