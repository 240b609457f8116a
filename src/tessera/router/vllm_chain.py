"""A vLLM replica as a one-hop chain, at the token level, behind the stage-client interface.

The router tokenizes, applies stop strings, formats OpenAI chunks and fails over for every
chain alike; a vLLM stage only has to produce the next token. So `VllmStageClient` speaks the
stage protocol's verbs to vLLM's OpenAI server:

- `open` books the session, up to the plan's share of the concurrency (`max_sessions`); past
  it the stage is Busy, like a full worker, and the router takes another chain.
- The first `step` (the prompt's token ids) starts ONE streamed `/v1/completions` request with
  `return_token_ids` and `ignore_eos` (the router decides where the answer ends, as for torch
  chains) for up to `max_length` tokens; every later step takes the next token of that stream.
  A step that does not continue the stream (a rewind or a replay) restarts it from the history.
- `close` drops the stream, which makes vLLM abort the request.
- `state` reads vLLM's `/metrics` (running and waiting requests, KV cache usage and size) into
  the router's `StageState`, in slots of `page_tokens` tokens of one block, capped by what the
  plan gives the server (`capacity_slots`): WS-RR sends work elsewhere once vLLM queues or its
  share is taken. Until vLLM's decode time is measured (`calibrate`, in the background: a
  short greedy answer, as Tessera's workers measure theirs at start-up) the stage is not ready,
  so that WS-RR never compares a measured chain with a guessed one.

Because a vLLM chain yields the same `StepToken`s, a replica that dies mid-answer is replaced
like any stage: the router replays prompt plus tokens so far into a split chain and the stream
continues. Sampling differs between engines (vLLM's seeded sampler is not Tessera's), so only
greedy answers continue exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tessera.api import stage as wire
from tessera.errors import Busy, NotFound
from tessera.placement import Plan, Problem
from tessera.placement.replicas import replica_kv_pages, replica_share

from .stage_client import StageClient, StageFailed, StepSampling, Tensor

log = logging.getLogger("tessera.router")
PAGE_TOKENS = 16  # the router's slot unit for a vLLM stage (vLLM's own block size may differ)
STATE_TIMEOUT_S = 2.0
CALIBRATE_PROMPT = 8  # tokens of the calibration prompt
CALIBRATE_TOKENS = 8  # decode steps timed
_GREEDY = StepSampling(0.0, 1.0, 0)


@dataclass
class _Session:
    max_length: int
    history: list[int] = field(default_factory=list)  # tokens vLLM has been given or produced
    ahead: list[int] = field(default_factory=list)  # streamed but not yet asked for
    response: aiohttp.ClientResponse | None = None
    lines: AsyncIterator[bytes] | None = None


@dataclass(frozen=True)
class VllmLoad:
    """What vLLM's /metrics says about its load."""

    running: int
    waiting: int
    kv_usage: float  # 0..1
    kv_tokens: int | None  # KV cache size in tokens (cache_config_info), None if not reported


def parse_metrics(text: str) -> VllmLoad:
    """vLLM's Prometheus text into its load (summed over engines)."""
    running = waiting = 0.0
    usage: list[float] = []
    kv_tokens: int | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:num_requests_running":
                running += sample.value
            elif sample.name == "vllm:num_requests_waiting":
                waiting += sample.value
            elif sample.name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
                usage.append(sample.value)
            elif sample.name == "vllm:cache_config_info":
                blocks = sample.labels.get("num_gpu_blocks") or sample.labels.get("num_cpu_blocks")
                size = sample.labels.get("block_size")
                if blocks and size and blocks.isdigit() and size.isdigit():
                    kv_tokens = (kv_tokens or 0) + int(blocks) * int(size)
    kv = max(usage) if usage else 0.0
    return VllmLoad(int(running), int(waiting), min(max(kv, 0.0), 1.0), kv_tokens)


def load_to_state(
    name: str,
    load: VllmLoad,
    *,
    num_blocks: int,
    max_length: int,
    capacity_slots: int | None,
    decode_s_per_block: float = 0.0,
) -> wire.StageState:
    """vLLM's load as the `StageState` of a stage that holds every block.

    Slots are pages of `PAGE_TOKENS` tokens of one block. Total: vLLM's KV cache, capped by the
    plan's `capacity_slots`; free: the unused part, none while vLLM has requests waiting (it is
    then full, whatever its KV usage says)."""
    vllm_slots = (
        (load.kv_tokens // PAGE_TOKENS) * num_blocks if load.kv_tokens is not None else None
    )
    candidates = [s for s in (vllm_slots, capacity_slots) if s is not None]
    total = min(candidates) if candidates else num_blocks * max(max_length // PAGE_TOKENS, 1)
    used = math.ceil(load.kv_usage * (vllm_slots if vllm_slots is not None else total))
    free = 0 if load.waiting > 0 else max(total - used, 0)
    return wire.StageState(
        name=name,
        model="",
        num_blocks=num_blocks,
        start_block=0,
        end_block=num_blocks,
        max_length=max_length,
        total_slots=total,
        free_slots=free,
        page_tokens=PAGE_TOKENS,
        allocated_slots=min(used, total),
        queued_steps=load.waiting,
        active_sessions=load.running,
        decode_s_per_block=decode_s_per_block,
        prefill_s_per_block_per_token=0.0,
        weight_bytes=0,
        memory_bytes=0,
        ready=True,
    )


class VllmStageClient(StageClient):
    """The stage client of a vLLM OpenAI server that serves the whole model as `model_name`."""

    def __init__(
        self,
        server: str,
        base_url: str,
        *,
        model_name: str,
        num_blocks: int,
        max_length: int,
        capacity_slots: int | None = None,
        max_sessions: int | None = None,
        timeout_s: float = 120.0,
        token: str | None = None,
    ) -> None:
        super().__init__(server, base_url, timeout_s=timeout_s, token=token)
        self.model_name = model_name
        self.num_blocks = num_blocks
        self.max_length = max_length
        self.capacity_slots = capacity_slots
        self.max_sessions = max_sessions  # the plan's share of the concurrency: then Busy
        # A stream lives as long as its answer: no total limit, only between two tokens.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s, connect=3.0)
        self._sessions: dict[str, _Session] = {}
        self.decode_s_per_block: float | None = None  # measured by `calibrate`
        self._calibration: asyncio.Task[float] | None = None
        self._closed = False  # no calibration is started after `aclose`

    async def open(self, session_id: str, start: int, end: int, max_length: int) -> int:
        if start != 0 or end != self.num_blocks:
            raise StageFailed(self.server, f"a vLLM stage serves blocks 0:{self.num_blocks} only")
        await self._drop(session_id)
        if self.max_sessions is not None and len(self._sessions) >= self.max_sessions:
            raise Busy(f"stage {self.server}: its {self.max_sessions} sessions are taken")
        self._sessions[session_id] = _Session(max_length)
        return wire.pages_for(max_length, PAGE_TOKENS) * self.num_blocks

    def _calibrating(self, session_id: str) -> None:
        self._sessions[session_id] = _Session(CALIBRATE_PROMPT + CALIBRATE_TOKENS + 1)

    async def step(
        self,
        session_id: str,
        x: Tensor,
        position: int,
        sampling: StepSampling | None,
        wire_dtype: str | None = None,
    ) -> Tensor | wire.StepToken:
        if wire_dtype is not None:  # a vLLM stage ends every chain: it sends tokens, no hidden
            raise StageFailed(self.server, "a vLLM stage has no hidden states to compress")
        s = self._sessions.get(session_id)
        if s is None:
            raise NotFound(f"stage {self.server}: no session {session_id}")
        if x.dtype != "int64" or sampling is None:
            raise StageFailed(self.server, "a vLLM stage takes token ids and samples the token")
        ids = [int(t) for t in np.frombuffer(x.data, dtype="<i8")]
        history = s.history[:position] + ids
        continues = s.lines is not None and position == len(s.history) - 1 and s.history[-1:] == ids
        if not continues:
            await self._start(s, history, sampling)
        token = await self._next(s)
        s.history.append(token)
        return wire.StepToken(token=token, logprob=0.0, position=len(s.history) - 1)

    async def _start(self, s: _Session, history: list[int], sampling: StepSampling) -> None:
        await self._close_stream(s)
        s.history, s.ahead = list(history), []
        body = {
            "model": self.model_name,
            "prompt": history,
            "max_tokens": max(s.max_length - len(history), 1),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed % 2**63,
            "stream": True,
            "ignore_eos": True,
            "skip_special_tokens": False,
            "return_token_ids": True,
            # No request_id: a restarted stream would reuse it while vLLM still aborts the old.
        }
        try:
            response = await self._http().post(
                "/v1/completions", json=body, timeout=self._stream_timeout
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StageFailed(self.server, f"{type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            text = (await response.read()).decode("utf-8", "replace")[:200]
            response.release()
            raise StageFailed(self.server, f"HTTP {response.status}: {text}")
        s.response, s.lines = response, _sse_data(response)

    async def _next(self, s: _Session) -> int:
        while not s.ahead:
            if s.lines is None:
                raise StageFailed(self.server, "no stream")
            try:
                data = await anext(s.lines)
            except StopAsyncIteration:
                raise StageFailed(self.server, "the stream ended before the answer") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise StageFailed(self.server, f"{type(exc).__name__}: {exc}") from exc
            if data == b"[DONE]":
                raise StageFailed(self.server, "the stream ended before the answer")
            try:
                chunk = json.loads(data)
                if "error" in chunk:
                    raise StageFailed(self.server, f"vLLM: {chunk['error']}")
                for choice in chunk.get("choices", ()):
                    s.ahead.extend(int(t) for t in choice.get("token_ids") or ())
            except (ValueError, TypeError, AttributeError) as exc:
                raise StageFailed(self.server, f"a bad stream chunk: {exc}") from exc
        return s.ahead.pop(0)

    async def close(self, session_id: str) -> None:
        await self._drop(session_id)

    async def _drop(self, session_id: str) -> None:
        s = self._sessions.pop(session_id, None)
        if s is not None:
            await self._close_stream(s)

    @staticmethod
    async def _close_stream(s: _Session) -> None:
        if s.response is not None:
            s.response.close()  # drops the connection: vLLM aborts the request
        s.response, s.lines = None, None

    async def aclose(self) -> None:
        self._closed = True
        if self._calibration is not None:
            self._calibration.cancel()
        for sid in list(self._sessions):
            await self._drop(sid)
        await super().aclose()

    async def calibrate(self) -> float:
        """vLLM's decode time per block: a short greedy answer streamed after a warm-up one,
        the median gap between its tokens over the blocks (what Tessera's workers measure at
        start-up), so that WS-RR compares the engines on measured times."""
        await self._time_one_answer()  # a fresh vLLM's first forwards are slow: warm it up
        return await self._time_one_answer()

    async def _time_one_answer(self) -> float:
        session = f"tessera-calibrate-{id(self)}"
        self._calibrating(session)  # not one of the router's sessions: outside the share
        stamps = []
        try:
            out = await self.step(session, Tensor.tokens([0] * CALIBRATE_PROMPT), 0, _GREEDY)
            for i in range(CALIBRATE_TOKENS):
                stamps.append(time.perf_counter())
                tokens = Tensor.tokens([out.token])  # type: ignore[union-attr]
                out = await self.step(session, tokens, CALIBRATE_PROMPT + i, _GREEDY)
            stamps.append(time.perf_counter())
        finally:
            await self.close(session)
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        return statistics.median(gaps) / self.num_blocks

    def _calibrated(self) -> bool:
        """Calibrate once, in the background (a poll must not wait seconds for it): False
        until it has succeeded; a failed calibration is tried again at the next poll."""
        task = self._calibration
        if task is not None and task.done():
            if not task.cancelled() and task.exception() is None:
                self.decode_s_per_block = task.result()
            else:
                log.info("calibrating vLLM stage %s failed; trying again", self.server)
            self._calibration = task = None
        if self.decode_s_per_block is None and task is None and not self._closed:
            self._calibration = asyncio.get_running_loop().create_task(self.calibrate())
        return self.decode_s_per_block is not None

    async def state(self) -> wire.StageState:
        return self.settle_probe(await self._load_state())

    async def _load_state(self) -> wire.StageState:
        """vLLM's /metrics as a state: what any client of the server can read."""
        response = await self._request("GET", "/metrics", timeout_s=STATE_TIMEOUT_S)
        if response.status_code != 200:
            raise StageFailed(self.server, f"/metrics answered HTTP {response.status_code}")
        try:
            load = parse_metrics(response.text)
        except ValueError as exc:
            raise StageFailed(self.server, f"unreadable /metrics: {exc}") from exc
        return load_to_state(
            self.server,
            load,
            num_blocks=self.num_blocks,
            max_length=self.max_length,
            capacity_slots=self.capacity_slots,
        )

    def settle_probe(self, state: wire.StageState) -> wire.StageState:
        """What only this client knows: vLLM's measured decode time (not ready until then, so
        that WS-RR never compares it unmeasured), and its sessions (none free past its share)."""
        calibrated = self._calibrated()
        update: dict[str, object] = {"decode_s_per_block": self.decode_s_per_block or 0.0}
        if not calibrated:
            update["ready"] = False
        if self.max_sessions is not None and len(self._sessions) >= self.max_sessions:
            update["free_slots"] = 0
        return state.model_copy(update=update)

    def _probe_client(self) -> StageClient:
        return _VllmMetricsClient(
            self.server,
            self.base_url,
            model_name=self.model_name,
            num_blocks=self.num_blocks,
            max_length=self.max_length,
            capacity_slots=self.capacity_slots,
            token=self.token,
        )


class _VllmMetricsClient(VllmStageClient):
    """The probe thread's client of a vLLM stage: /metrics alone (the router's own client
    settles each answer with its calibration and sessions)."""

    async def state(self) -> wire.StageState:
        return await self._load_state()


async def _sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The `data:` payloads of a server-sent-event stream."""
    async for line in response.content:
        line = line.strip()
        if line.startswith(b"data:"):
            yield line[5:].strip()


def vllm_client(
    problem: Problem,
    plan: Plan,
    server: str,
    base_url: str,
    *,
    model_name: str,
    timeout_s: float,
    token: str | None,
) -> VllmStageClient:
    """The client of the vLLM stage `server` of `plan`: its load is capped by the plan's memory
    for it and its share of the concurrency (`placement.replicas`), so that past that share
    WS-RR sends requests to the other chains, as the plan intends."""
    w = problem.workload
    known = any(s.name == server for s in problem.servers)
    capacity = replica_kv_pages(problem, server, PAGE_TOKENS) if known else None
    return VllmStageClient(
        server,
        base_url,
        model_name=model_name,
        num_blocks=problem.num_blocks,
        max_length=w.max_input_tokens + w.max_output_tokens,
        capacity_slots=capacity * problem.num_blocks if capacity is not None else None,
        max_sessions=replica_share(problem, plan) if known else None,
        timeout_s=timeout_s,
        token=token,
    )
