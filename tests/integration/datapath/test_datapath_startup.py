"""A start-up that never refuses: from the moment `tessera up` starts, poll `/v1/models` as a
client would; the official OpenAI SDK's first request succeeds as soon as the model is listed
(no 503 in between), and the router's `/readyz` then says ready."""

from __future__ import annotations

import time

import httpx
import openai
from datapath_procs import REPO, Up

MODEL = "smollm2-135m-instruct"


def test_the_sdk_succeeds_the_moment_the_model_is_listed(smollm2_dir, tmp_path):
    up = Up(REPO / "examples" / "local.yaml", tmp_path / "run")
    try:
        deadline = time.monotonic() + 180
        listed = False
        while time.monotonic() < deadline and not listed:
            try:
                r = httpx.get(f"{up.base_url}/v1/models", timeout=2)
            except httpx.TransportError:
                time.sleep(0.05)  # the router is not listening yet
                continue
            assert r.status_code == 200
            listed = any(m["id"] == MODEL for m in r.json()["data"])
            if not listed:
                time.sleep(0.05)
        assert listed, "the model was never listed"
        with openai.OpenAI(base_url=f"{up.base_url}/v1", api_key="unused", max_retries=0) as c:
            answer = c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=8,
                temperature=0,
            )
        assert answer.choices[0].message.content
        assert httpx.get(f"{up.base_url}/readyz", timeout=2).status_code == 200
    finally:
        up.stop()
