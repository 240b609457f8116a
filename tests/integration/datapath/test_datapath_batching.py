"""Many streams at once through `tessera up examples/local.yaml`: 32 concurrent greedy streams
are all served (no 429, no 5xx) and the stages' own accounting (`/state`) never admits past
their memory while they run. With `batch_invariant: true` each stream equals, bit for bit, the
answer it gets alone; without it (the default, like vLLM's) a near-tie may break the other
way under load, so there only the count of equal answers is reported."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import yaml
from datapath_procs import REPO, Up

MODEL = "smollm2-135m-instruct"
NEW = 10
TOPICS = [
    "the sea", "cats", "gravity", "planes", "Python", "a forest", "the moon", "bread",
    "rain", "music", "trains", "chess", "bees", "volcanoes", "paper", "glass",
]  # fmt: skip


def _body(i: int) -> dict[str, object]:
    # Different lengths on purpose: prefills of several sizes join the decodes of others.
    words = " ".join(["please"] * (i % 16 % 5))
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % 16]}. {words}"}],
        "max_tokens": NEW,
        "temperature": 0,
        "stream": True,
    }


async def _stream(client: httpx.AsyncClient, i: int) -> tuple[int, str]:
    text = ""
    async with client.stream("POST", "/v1/chat/completions", json=_body(i)) as r:
        if r.status_code != 200:
            return r.status_code, (await r.aread()).decode()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("choices"):
                    text += chunk["choices"][0]["delta"].get("content") or ""
    return 200, text


async def _many(base_url: str, ids: list[int]) -> list[tuple[int, str]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        return await asyncio.gather(*(_stream(client, i) for i in ids))


def _watch_states(up, stop: threading.Event, seen: list[dict[str, int]]) -> None:
    endpoints = json.loads((up.run_dir / "endpoints.json").read_text())
    token = (up.run_dir / "worker-token").read_text().strip()
    with httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=5) as c:
        while not stop.is_set():
            for url in endpoints.values():
                seen.append(c.get(f"{url}/state").json())
            time.sleep(0.2)


@pytest.fixture(scope="module")
def exact_up(smollm2_dir, tmp_path_factory):
    """examples/local.yaml with `batch_invariant: true`."""
    pool = yaml.safe_load((REPO / "examples" / "local.yaml").read_text())
    pool["batch_invariant"] = True
    pool["model"]["source"] = str(smollm2_dir)  # already converted: no second conversion
    folder = tmp_path_factory.mktemp("exact")
    (folder / "pool.yaml").write_text(yaml.safe_dump(pool))
    up = Up(folder / "pool.yaml", folder / "run")
    try:
        up.wait_ready()
        yield up
    finally:
        up.stop()


def test_32_concurrent_greedy_streams_are_all_served_and_equal_each_alone(exact_up):
    up = exact_up
    alone = {i: asyncio.run(_many(up.base_url, [i]))[0] for i in range(16)}
    assert all(status == 200 and text for status, text in alone.values())
    stop, states = threading.Event(), []
    watcher = threading.Thread(target=_watch_states, args=(up, stop, states), daemon=True)
    watcher.start()
    try:
        together = asyncio.run(_many(up.base_url, list(range(32))))
    finally:
        stop.set()
        watcher.join(timeout=10)
    statuses = [status for status, _ in together]
    assert statuses == [200] * 32, statuses
    for i, (_, text) in enumerate(together):
        assert text == alone[i % 16][1], f"stream {i}"
    assert states, "no /state was read during the load"
    assert any(s["active_sessions"] > 1 for s in states)  # they really ran at once
    for s in states:
        assert 0 <= s["free_slots"] <= s["total_slots"]
        assert s["allocated_slots"] <= s["total_slots"] - s["free_slots"]


def test_32_streams_on_the_default_pool_are_all_served(up, capsys):
    alone = {i: asyncio.run(_many(up.base_url, [i]))[0][1] for i in range(16)}
    together = asyncio.run(_many(up.base_url, list(range(32))))
    assert [status for status, _ in together] == [200] * 32
    same = sum(text == alone[i % 16] for i, (_, text) in enumerate(together))
    with capsys.disabled():
        print(f"\n  default (batch-variant) pool: {same} of 32 answers equal the lone answer")
