"""The router's edge on in-process fake stages: every OpenAI parameter it does not implement is
a 400 naming it (its no-op value is accepted), clear messages for common mistakes, logprobs in
OpenAI's shapes (streamed and not), and /metrics counting every outcome once."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from fastapi.testclient import TestClient

from tessera.router.guard import OUTCOME_KEY, CountOutcomes

from .datapath_helpers import smollm2_dir
from .router_fakes import MODEL, fake_pool, router_app


@pytest.fixture(scope="module")
def client():
    with TestClient(router_app(fake_pool(), smollm2_dir(), max_body_bytes=20_000)) as c:
        yield c


def _chat(**extra):
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }


def _completion(**extra):
    return {"model": MODEL, "prompt": "hi", "max_tokens": 4, "temperature": 0, **extra}


def _error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] == param and param.split(".")[-1] in err["message"]
    if code is not None:
        assert err["code"] == code
    return err


UNSUPPORTED = [
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("chat", {"tool_choice": "auto"}, "tool_choice"),
    ("chat", {"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ("chat", {"parallel_tool_calls": True}, "parallel_tool_calls"),
    ("chat", {"functions": [{"name": "f"}]}, "functions"),
    ("chat", {"function_call": "auto"}, "function_call"),
    ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ("chat", {"frequency_penalty": 0.5}, "frequency_penalty"),
    ("chat", {"presence_penalty": -1}, "presence_penalty"),
    ("chat", {"logit_bias": {"50256": -100}}, "logit_bias"),
    ("chat", {"n": 2}, "n"),
    ("completions", {"best_of": 3}, "best_of"),
    ("completions", {"suffix": "and then"}, "suffix"),
    ("completions", {"echo": True}, "echo"),
]
UNKNOWN = [
    ("chat", {"modalities": ["audio"]}, "modalities"),
    ("chat", {"top_k": 5}, "top_k"),
    ("completions", {"top_logprobs": 2}, "top_logprobs"),  # a chat parameter
    ("chat", {"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
    (
        "chat",
        {"messages": [{"role": "assistant", "content": "x", "tool_calls": []}]},
        "messages.0.tool_calls",
    ),
]


def _post(c, kind, extra):
    if kind == "chat":
        return c.post("/v1/chat/completions", json=_chat(**extra))
    return c.post("/v1/completions", json=_completion(**extra))


@pytest.mark.parametrize(("kind", "extra", "param"), UNSUPPORTED)
def test_unsupported_parameters_are_400_naming_them(client, kind, extra, param):
    err = _error(_post(client, kind, extra), 400, param, "unsupported_parameter")
    assert "not supported" in err["message"] or "only" in err["message"]


@pytest.mark.parametrize(("kind", "extra", "param"), UNKNOWN)
def test_unknown_parameters_are_400_naming_them_as_openai_does(client, kind, extra, param):
    err = _error(_post(client, kind, extra), 400, param, "unsupported_parameter")
    assert err["message"] == f"Unrecognized request argument supplied: {param}"


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("chat", {"tools": [], "tool_choice": "none", "parallel_tool_calls": False}),
        ("chat", {"functions": None, "function_call": "none", "logit_bias": {}}),
        ("chat", {"response_format": {"type": "text"}, "n": 1, "user": "u-1"}),
        ("chat", {"frequency_penalty": 0, "presence_penalty": 0.0}),
        ("chat", {"messages": [{"role": "user", "content": "hi", "name": "ann"}]}),
        ("completions", {"best_of": 1, "suffix": "", "echo": False}),
    ],
)
def test_the_no_op_values_of_unsupported_parameters_are_accepted(client, kind, extra):
    r = _post(client, kind, extra)
    assert r.status_code == 200, r.text


def test_clear_messages_for_common_mistakes(client):
    err = _error(_post(client, "chat", {"stop": list("abcde")}), 400, "stop")
    assert "at most 4" in err["message"]
    for part in ({"type": "image_url", "image_url": {"url": "x"}}, {"type": "input_audio"}):
        msgs = [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]
        err = _error(_post(client, "chat", {"messages": msgs}), 400, "messages.0.content.1.type")
        assert f"'{part['type']}' content parts are not supported" in err["message"]
        assert "text only" in err["message"]
    _error(_post(client, "chat", {"top_p": 0}), 400, "top_p")
    _error(_post(client, "completions", {"top_p": -0.1}), 400, "top_p")
    _error(_post(client, "chat", {"top_logprobs": 2}), 400, "top_logprobs")
    _error(_post(client, "chat", {"logprobs": True, "top_logprobs": 21}), 400, "top_logprobs")
    _error(_post(client, "completions", {"logprobs": 6}), 400, "logprobs")


def test_a_json_body_without_content_type_is_read_as_json(client):
    body = json.dumps(_completion()).encode()
    for headers in ({}, {"content-type": ""}):
        r = client.post("/v1/completions", content=body, headers=headers)
        assert r.status_code == 200, r.text
    r = client.post(  # what `curl -d` sends by default
        "/v1/completions",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    err = _error(r, 415, code="unsupported_media_type")
    assert "application/json" in err["message"]


def _sse(r):
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def test_chat_logprobs_streamed_and_not(client):
    body = _chat(logprobs=True, top_logprobs=3, max_tokens=6)
    whole = client.post("/v1/chat/completions", json=body).json()
    content = whole["choices"][0]["logprobs"]["content"]
    assert len(content) == whole["usage"]["completion_tokens"] == 6
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] == entry["logprob"]
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    chunks = _sse(client.post("/v1/chat/completions", json={**body, "stream": True}))
    streamed = [
        e for c in chunks for ch in c["choices"] for e in (ch["logprobs"] or {}).get("content", [])
    ]
    assert streamed == content
    plain = client.post("/v1/chat/completions", json=_chat()).json()
    assert plain["choices"][0]["logprobs"] is None
    only_chosen = client.post("/v1/chat/completions", json=_chat(logprobs=True)).json()
    entries = only_chosen["choices"][0]["logprobs"]["content"]
    assert entries and all(e["top_logprobs"] == [] for e in entries)


def test_completion_logprobs_streamed_and_not(client):
    body = _completion(logprobs=2, max_tokens=5)
    whole = client.post("/v1/completions", json=body).json()
    lp = whole["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    offsets = [0]
    for token in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp["text_offset"] == offsets
    for token, logprob, top in zip(
        lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
    ):
        assert top[token] == logprob and 1 <= len(top) <= 3
    chunks = _sse(client.post("/v1/completions", json={**body, "stream": True}))
    parts = [
        c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
    ]
    assert [t for p in parts for t in p["tokens"]] == lp["tokens"]
    assert [o for p in parts for o in p["text_offset"]] == lp["text_offset"]
    assert (
        client.post("/v1/completions", json=_completion()).json()["choices"][0]["logprobs"] is None
    )


def _counts(c) -> dict[str, float]:
    text = c.get("/metrics").text
    found = re.findall(r'tessera_requests_total\{model="[^"]*",status="(\w+)"\} (\S+)', text)
    return {status: float(n) for status, n in found}


def test_metrics_count_every_outcome(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-1\n")
    app = router_app(fake_pool(), smollm2_dir(), api_keys_file=keys, max_body_bytes=5_000)
    auth = {"authorization": "Bearer sk-1"}
    with TestClient(app) as c:
        c.post("/v1/completions", json=_completion(), headers=auth)  # 200
        c.post("/v1/completions", json=_completion(), headers={"authorization": "Bearer no"})
        c.post("/v1/completions", json=_completion(prompt="x" * 6_000), headers=auth)  # 413
        c.post("/v1/completions", content=b"a=b", headers={**auth, "content-type": "text/plain"})
        c.post("/v1/completions", json=_completion(tools=[1]), headers=auth)  # 400
        c.post("/v1/completions", json=_completion(model="other"), headers=auth)  # 404
        c.get("/v1/nope", headers=auth)  # 404
        c.delete("/v1/models", headers=auth)  # 405
        c.get("/health")  # not a /v1 request: not counted
        counts = _counts(c)
    assert counts == {"200": 1, "401": 1, "413": 1, "415": 1, "400": 1, "404": 2, "405": 1}


def _run(app, calls: list[str]) -> None:
    """Run `app` once through CountOutcomes; `calls` gets the counted outcome."""
    counted = CountOutcomes(app, count=calls.append)
    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST"}

    async def receive():
        return {"type": "http.disconnect"}

    async def send(_message):
        return None

    async def go():
        try:
            await counted(scope, receive, send)
        except RuntimeError:
            pass

    asyncio.run(go())


def test_outcomes_the_routes_cannot_see_are_counted_as_such():
    calls: list[str] = []

    async def cut_stream(_scope, _receive, send):  # the client left mid-stream
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})

    async def crash(_scope, _receive, _send):
        raise RuntimeError("boom")

    async def stream_error(scope, _receive, send):  # 200, then an error event, then the end
        await send({"type": "http.response.start", "status": 200, "headers": []})
        scope["state"][OUTCOME_KEY] = "503"
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    for app in (cut_stream, crash, stream_error):
        _run(app, calls)
    assert calls == ["499", "500", "503"]
