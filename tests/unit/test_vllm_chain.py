"""The router's vLLM stage client against a fake vLLM OpenAI server (aiohttp, loopback): one
streamed request per answer, the next token per step, a restart on a replay, an abort on close,
and vLLM's /metrics read as the router's load."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from tessera.api.vllm import endpoint, server_args, split_endpoint
from tessera.errors import Busy, NotFound
from tessera.router.stage_client import StageFailed, StepSampling, Tensor
from tessera.router.vllm_chain import (
    PAGE_TOKENS,
    VllmLoad,
    VllmStageClient,
    load_to_state,
    parse_metrics,
)

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1.0
"""
GREEDY = StepSampling(0.0, 1.0, 7)


class FakeVllm:
    """Answers each completion with tokens prompt[-1] + 1, + 2, ... (one per chunk)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.aborted = 0
        self.waiting = 0
        self.fail_after: int | None = None  # drop the connection after this many tokens

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        prompt = body["prompt"]
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(int(body["max_tokens"])):
                if self.fail_after is not None and i >= self.fail_after:
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                chunk = {"choices": [{"index": 0, "text": "x", "token_ids": [prompt[-1] + i + 1]}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await asyncio.sleep(0.001)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted += 1
            raise
        return resp

    async def metrics(self, _request: web.Request) -> web.Response:
        text = METRICS.replace(
            'num_requests_waiting{engine="0",model_name="m"} 0.0',
            f'num_requests_waiting{{engine="0",model_name="m"}} {self.waiting}.0',
        )
        return web.Response(text=text)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[FakeVllm, str]]:
    vllm = FakeVllm()
    app = web.Application()
    app.router.add_post("/v1/completions", vllm.completions)
    app.router.add_get("/metrics", vllm.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield vllm, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def with_fake(test: Callable[[FakeVllm, str], Awaitable[None]]) -> None:
    async def run() -> None:
        async with serving() as (vllm, url):
            await test(vllm, url)

    asyncio.run(run())


def _client(url: str, capacity: int | None = None) -> VllmStageClient:
    return VllmStageClient(
        "big", url, model_name="m", num_blocks=30, max_length=64, capacity_slots=capacity
    )


def test_one_stream_per_answer_and_a_token_per_step() -> None:
    async def run(vllm: FakeVllm, url: str) -> None:
        client = _client(url)
        try:
            slots = await client.open("s1", 0, 30, 20)
            assert slots == 2 * 30  # 20 tokens: two pages of 16, on each of the 30 blocks
            first = await client.step("s1", Tensor.tokens([5, 6, 7]), 0, GREEDY)
            assert isinstance(first, type(first)) and first.token == 8 and first.position == 3
            got = [first.token]
            for _ in range(4):
                out = await client.step("s1", Tensor.tokens([got[-1]]), 3 + len(got) - 1, GREEDY)
                got.append(out.token)  # type: ignore[union-attr]
            assert got == [8, 9, 10, 11, 12]
            assert len(vllm.bodies) == 1
            body = vllm.bodies[0]
            assert body["prompt"] == [5, 6, 7] and body["max_tokens"] == 17
            assert body["ignore_eos"] is True and body["return_token_ids"] is True
            assert body["temperature"] == 0.0 and body["stream"] is True
        finally:
            await client.aclose()

    with_fake(run)


def test_a_replay_restarts_the_stream_from_the_history() -> None:
    async def run(vllm: FakeVllm, url: str) -> None:
        client = _client(url)
        try:
            await client.open("s1", 0, 30, 40)
            await client.step("s1", Tensor.tokens([1, 2]), 0, GREEDY)  # -> 3
            # A replay (failover onto this stage): the whole history at position 0.
            out = await client.step("s1", Tensor.tokens([1, 2, 3, 50]), 0, GREEDY)
            assert out.token == 51  # type: ignore[union-attr]
            assert [b["prompt"] for b in vllm.bodies] == [[1, 2], [1, 2, 3, 50]]
        finally:
            await client.aclose()

    with_fake(run)


def test_close_aborts_the_request_and_forgets_the_session() -> None:
    async def run(vllm: FakeVllm, url: str) -> None:
        client = _client(url)
        try:
            await client.open("s1", 0, 30, 64)
            await client.step("s1", Tensor.tokens([1]), 0, GREEDY)
            await client.close("s1")
            for _ in range(100):
                if vllm.aborted:
                    break
                await asyncio.sleep(0.01)
            assert vllm.aborted == 1
            with pytest.raises(NotFound):
                await client.step("s1", Tensor.tokens([2]), 1, GREEDY)
        finally:
            await client.aclose()

    with_fake(run)


def test_a_dropped_stream_is_a_stage_failure() -> None:
    async def run(vllm: FakeVllm, url: str) -> None:
        vllm.fail_after = 2
        client = _client(url)
        try:
            await client.open("s1", 0, 30, 64)
            a = await client.step("s1", Tensor.tokens([1]), 0, GREEDY)
            b = await client.step("s1", Tensor.tokens([a.token]), 1, GREEDY)  # type: ignore[union-attr]
            with pytest.raises(StageFailed) as info:
                await client.step("s1", Tensor.tokens([b.token]), 2, GREEDY)  # type: ignore[union-attr]
            assert info.value.server == "big"
        finally:
            await client.aclose()

    with_fake(run)


def test_a_partial_range_or_a_dead_server_is_refused() -> None:
    async def run() -> None:
        client = _client("http://127.0.0.1:9")
        try:
            with pytest.raises(StageFailed):
                await client.open("s1", 0, 10, 64)
            await client.open("s2", 0, 30, 64)
            with pytest.raises(StageFailed):
                await client.step("s2", Tensor.tokens([1]), 0, GREEDY)
            with pytest.raises(StageFailed):
                await client.state()
        finally:
            await client.aclose()

    asyncio.run(run())


def test_state_from_metrics() -> None:
    async def run(vllm: FakeVllm, url: str) -> None:
        client = _client(url, capacity=30 * 50)
        try:
            state = await client.state()
            assert not state.ready  # calibrating: not routed to yet
            for _ in range(200):
                state = await client.state()
                if state.ready:
                    break
                await asyncio.sleep(0.01)
            assert state.ready and state.active_sessions == 3 and state.page_tokens == PAGE_TOKENS
            # Calibrated once: the fake streams a token per millisecond or more, over 30 blocks.
            assert 0.001 / 30 <= state.decode_s_per_block < 1.0
            assert len(vllm.bodies) == 2 and vllm.bodies[1]["temperature"] == 0.0
            # vLLM: 100 blocks of 16 tokens = 100 pages per block; the plan caps it at 50.
            assert state.total_slots == 30 * 50
            assert state.free_slots == 30 * 50 - 30 * 25  # a quarter of vLLM's 100 pages in use
            vllm.waiting = 2
            assert (await client.state()).free_slots == 0
        finally:
            await client.aclose()

    with_fake(run)


def test_parse_metrics_reads_vllm_load() -> None:
    load = parse_metrics(METRICS)
    assert load == VllmLoad(running=3, waiting=0, kv_usage=0.25, kv_tokens=1600)


def test_load_without_cache_info_uses_the_cap() -> None:
    state = load_to_state(
        "b",
        VllmLoad(1, 0, 0.5, None),
        num_blocks=2,
        max_length=64,
        capacity_slots=40,
    )
    assert state.total_slots == 40 and state.free_slots == 20


def test_endpoint_prefix_and_server_args() -> None:
    assert split_endpoint(endpoint("http://h:1")) == ("vllm", "http://h:1")
    assert split_endpoint("http://h:1") == ("tessera", "http://h:1")
    args = server_args("/m", "name", port=9, max_model_len=128, enforce_eager=True)
    assert args[args.index("--port") + 1] == "9" and "--enforce-eager" in args
    assert args[args.index("--served-model-name") + 1] == "name"


def test_past_its_share_a_vllm_stage_is_busy() -> None:
    async def run(_vllm: FakeVllm, url: str) -> None:
        client = VllmStageClient(
            "big", url, model_name="m", num_blocks=30, max_length=64, max_sessions=2
        )
        try:
            await client.open("a", 0, 30, 64)
            await client.open("b", 0, 30, 64)
            with pytest.raises(Busy):
                await client.open("c", 0, 30, 64)
            assert (await client.state()).free_slots == 0
            await client.close("a")
            await client.open("c", 0, 30, 64)
        finally:
            await client.aclose()

    with_fake(run)


def test_the_probe_threads_client_reads_metrics_and_the_routers_client_settles_them() -> None:
    async def run(vllm: FakeVllm, url: str) -> None:
        client = VllmStageClient(
            "big", url, model_name="m", num_blocks=30, max_length=64, max_sessions=2
        )
        target = client.probe_target()
        prober = target.connect()  # the probe thread's own client
        try:
            raw = await prober.state()
            assert raw.active_sessions == 3 and raw.free_slots > 0
            assert not vllm.bodies  # /metrics alone: the probe's client calibrates nothing
            assert not target.settle(raw).ready  # the router's client starts calibrating
            for _ in range(200):
                if target.settle(raw).ready:
                    break
                await asyncio.sleep(0.01)
            settled = target.settle(raw)
            assert settled.ready and settled.decode_s_per_block > 0
            await client.open("a", 0, 30, 64)
            await client.open("b", 0, 30, 64)
            assert target.settle(raw).free_slots == 0  # its share is taken
        finally:
            await prober.aclose()
            await client.aclose()

    with_fake(run)
