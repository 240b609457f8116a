"""The stage protocol under hostile input, on a tiny random Llama held whole by one worker:
malformed tensors are 400s that leave every session (the caller's own included) intact, and
with a deployment token nothing but the probes answers without it."""

from __future__ import annotations

import numpy as np
import pytest
from worker_app import started_worker

TOKEN = "deployment-token-1"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def whole():
    client = started_worker(0, 8, token=TOKEN)
    yield client
    client.__exit__(None, None, None)


def _open(c, sid):
    body = {"session_id": sid, "start_block": 0, "end_block": 8, "max_length": 32}
    assert c.post("/v1/sessions", json=body, headers=AUTH).status_code == 200


def _step(c, sid, ids, pos, **headers):
    h = {
        **AUTH,
        "x-dtype": "int64",
        "x-shape": f"1,{len(ids)}",
        "x-position": str(pos),
        **headers,
    }
    return c.post(f"/v1/sessions/{sid}/step", content=np.asarray([ids], "<i8").tobytes(), headers=h)


def _generate(c, sid, prompt, n, between=None):
    r = _step(c, sid, prompt, 0)
    out = [r.json()["token"]]
    for i in range(n - 1):
        if between is not None:
            between(i)
        r = _step(c, sid, [out[-1]], len(prompt) + i)
        assert r.status_code == 200, r.text
        out.append(r.json()["token"])
    return out


def test_malformed_tensors_are_400_and_harm_no_session(whole):
    c = whole
    prompt = [3, 14, 15, 92, 65]
    _open(c, "ref")
    reference = _generate(c, "ref", prompt, 8)
    _open(c, "good")
    _open(c, "victim")
    raw = np.asarray([[1, 2]], "<i8").tobytes()
    bad_calls = [
        dict(content=raw, headers={"x-dtype": "float32", "x-shape": "1,2"}),  # wrong dtype
        dict(content=raw, headers={"x-dtype": "bfloat99", "x-shape": "1,2"}),  # unknown dtype
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,3"}),  # shape vs body
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "2,1"}),  # batch of 2
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,2,64"}),  # hidden shape
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "a,b"}),  # not a shape
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,-2"}),
        dict(content=raw[:-3], headers={"x-dtype": "int64", "x-shape": "1,2"}),  # short body
        dict(content=b"", headers={"x-dtype": "int64", "x-shape": "1,0"}),
        dict(
            content=np.asarray([[1, 10**6]], "<i8").tobytes(),
            headers={"x-dtype": "int64", "x-shape": "1,2"},
        ),
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,2", "x-position": "-1"}),
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,2", "x-seed": "x"}),
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,2", "x-temperature": "nan"}),
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,2", "x-top-p": "0"}),
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,2", "x-top-p": "-0.5"}),
        dict(content=raw, headers={"x-dtype": "int64", "x-shape": "1,2", "x-top-logprobs": "99"}),
    ]

    def attack(_i):
        for sid in ("good", "victim"):
            for call in bad_calls:
                r = c.post(
                    f"/v1/sessions/{sid}/step",
                    content=call["content"],
                    headers={**AUTH, **call["headers"]},
                )
                assert r.status_code == 400, (call["headers"], r.text)
                assert set(r.json()["error"]) == {"message", "type", "code"}

    assert _generate(c, "good", prompt, 8, between=attack) == reference
    assert c.get("/state", headers=AUTH).json()["active_sessions"] == 3
    for sid in ("ref", "good", "victim"):
        c.post(f"/v1/sessions/{sid}/close", headers=AUTH)


def test_only_probes_answer_without_the_deployment_token(whole):
    c = whole
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        assert c.get("/state", headers=headers).status_code == 401
        body = {"session_id": "s", "start_block": 0, "end_block": 8, "max_length": 8}
        r = c.post("/v1/sessions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert c.post("/v1/sessions/s/step", content=b"", headers=headers).status_code == 401
        assert c.post("/v1/sessions/s/close", headers=headers).status_code == 401
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert c.get(probe).status_code == 200
    assert c.get("/state", headers=AUTH).status_code == 200
