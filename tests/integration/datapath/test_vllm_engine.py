"""`tessera up examples/local-vllm.yaml`: a vLLM replica (node-big) beside a split chain
(node-a>node-b) behind one router. One pool for the module (vLLM takes minutes to start); the
tests run in order and the last one kills vLLM.

Marked `vllm`: `make test-vllm`; skipped when `.venv-vllm` is absent (`make vllm-venv`)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import signal
import time

import httpx
import pytest
import yaml
from datapath_procs import REPO, Up

from tessera.api.vllm import MODULE

VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"
pytestmark = [
    pytest.mark.vllm,
    # Above the global 300 s: the first test's setup starts vLLM (up to 900 s to ready, then up
    # to 300 s until routed); the fixture's own deadlines fail first, with a clearer message.
    pytest.mark.timeout(1500),
    pytest.mark.skipif(not VLLM_PY.is_file(), reason="no .venv-vllm: run `make vllm-venv`"),
]
MODEL = "smollm2-135m-instruct"
VLLM_CHAIN = "node-big"
SPLIT_CHAIN = "node-a>node-b"
PROMPTS = ["What is the capital of France?", "Name three colours.", "Count from one to five."]
greedy: dict[str, str] = {}  # prompt -> vLLM's greedy answer (filled by the first test)


@pytest.fixture(scope="module")
def pool(smollm2_dir, tmp_path_factory):
    cfg = yaml.safe_load((REPO / "examples" / "local-vllm.yaml").read_text())
    # Sooner to start (no torch.compile) and a small KV cache: this machine is shared.
    cfg["vllm"].update({"enforce_eager": True, "kv_cache_gib": 1, "python": str(VLLM_PY)})
    # A request that finds every chain full waits for room rather than failing (this machine
    # is shared: answers take longer than the plan predicts).
    cfg["router"]["max_wait_s"] = 60
    # The split chain clearly slower per token than the replica, so that a lone request's
    # cheapest chain is the replica with a margin (the router's measured inputs on this loaded
    # machine, once: vLLM about 5 ms per block, the torch stages 25-32 ms at speed factor 2).
    for node in cfg["nodes"]:
        if node["name"] != VLLM_CHAIN:
            node["speed_factor"] = 2.0
    tmp = tmp_path_factory.mktemp("vllm")
    path = tmp / "pool.yaml"
    path.write_text(yaml.safe_dump(cfg))
    up = Up(path, tmp / "run")
    try:
        up.wait_ready(timeout_s=900)
        _wait_routed(up.base_url, VLLM_CHAIN, timeout_s=300)
        yield up
    finally:
        up.stop()


def _wait_routed(base: str, server: str, timeout_s: float) -> None:
    """Until the router routes to `server` (vLLM: once it has measured its decode time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/readyz", timeout=5, trust_env=False)
        if server in r.json().get("stages_up", []):
            return
        time.sleep(0.5)
    raise AssertionError(f"the router never saw {server} up")


def _chat(base: str, prompt: str, max_tokens: int = 24) -> tuple[str, str]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300, trust_env=False)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"], r.headers["x-tessera-chain"]


def test_a_lone_request_takes_the_vllm_replica(pool: Up) -> None:
    for prompt in PROMPTS:
        text, chain = _chat(pool.base_url, prompt)
        assert chain == VLLM_CHAIN
        assert text.strip()
        greedy[prompt] = text


def test_past_the_replicas_share_answers_also_come_through_the_split_chain(pool: Up) -> None:
    # Four long answers take the replica's share (4 of the pool's 8 declared requests); short
    # requests then cost less on the split chain than waiting for the replica (WS-RR).
    story = "Tell me a long story about a dragon."
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        longs = [ex.submit(_chat, pool.base_url, story, 96) for _ in range(4)]
        time.sleep(3.0)  # the long ones have opened their sessions
        shorts = [ex.submit(_chat, pool.base_url, PROMPTS[1], 8) for _ in range(2)]
        results = [f.result() for f in longs + shorts]
    assert [chain for _, chain in results] == [VLLM_CHAIN] * 4 + [SPLIT_CHAIN] * 2
    for text, _ in results:
        assert text.strip()


def _vllm_pid(run_dir: pathlib.Path) -> int:
    url = json.loads((run_dir / "endpoints.json").read_text())["node-big"]
    port = url.rsplit(":", 1)[1]
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if MODULE.encode() in argv and port.encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no vLLM server on port {port}")


def test_with_vllm_killed_a_stream_completes_and_new_requests_take_the_split_chain(
    pool: Up,
) -> None:
    prompt = PROMPTS[0]
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
    }
    parts: list[str] = []
    events: list[dict[str, object]] = []
    with (
        httpx.Client(timeout=300, trust_env=False) as client,
        client.stream("POST", f"{pool.base_url}/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        assert r.headers["x-tessera-chain"] == VLLM_CHAIN
        killed = False
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            events.append(event)
            for choice in event.get("choices", []):
                parts.append(choice["delta"].get("content") or "")
            if len(parts) >= 3 and not killed:
                # The vLLM server and its engine process: their own process group.
                os.killpg(_vllm_pid(pool.run_dir), signal.SIGKILL)
                killed = True
    assert killed
    assert not [e for e in events if "error" in e], events
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")  # type: ignore[index]
    streamed = "".join(parts)
    # Greedy on both engines, fp32: the continuation on the split chain is the same text.
    assert streamed == greedy[prompt]

    time.sleep(1.0)
    for p in PROMPTS:
        text, chain = _chat(pool.base_url, p)
        assert chain == SPLIT_CHAIN
        assert text == greedy[p]  # Tessera's fp32 split chain agrees with vLLM's fp32
