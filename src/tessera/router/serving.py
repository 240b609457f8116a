"""The serving layer: one function per endpoint does the work behind the thin routes
(`openai_routes.py`), as vLLM's `serving_chat` / `serving_completion` do.

A request is checked against this deployment's limits, admitted (`admission.py`: a chain with
room, or a place in the queue), generated (`generate.py`) and rendered (`render.py`). Errors are
raised, never returned: the app's one handler renders them (`errors.install_error_handlers`).
The model is listed only while a complete chain of stages is up; a request that arrives before
(start-up) waits for one within `max_wait_s`. A streamed answer starts (200, headers, first
chunk) only once the first token exists: its time to first token is the real one, and a failure
before it is a plain OpenAI error with its HTTP status; a failure after it is an SSE error event.
A client that leaves while queued, or during a non-streamed answer, frees its place and its
sessions at once (a streamed answer is stopped by the server when the client leaves).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from tessera.api import openai as oa
from tessera.api.stage import StepToken
from tessera.errors import InvalidInput, TesseraError
from tessera.placement import Workload

from .admission import AdmissionQueue, GenerationParams
from .chainrun import ChainRun
from .chains import LiveChains
from .errors import ClientGone, ModelNotFound, PromptTooLong, error_event, error_response
from .failover import FailoverPolicy
from .generate import generate
from .guard import OUTCOME_KEY
from .metrics import RouterMetrics
from .render import ChatRenderer, CompletionRenderer, Renderer, usage
from .text import TextStream
from .tokenizer import Tokenizer

CHAIN_HEADER = "x-tessera-chain"
T = TypeVar("T")


@dataclass
class RouterState:
    model_name: str
    tokenizer: Tokenizer
    chains: LiveChains
    metrics: RouterMetrics
    queue: AdmissionQueue
    max_input_tokens: int
    max_output_tokens: int
    created: int
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)

    def use_workload(self, workload: Workload) -> None:
        """The request limits of a reloaded plan's problem."""
        self.max_input_tokens = workload.max_input_tokens
        self.max_output_tokens = workload.max_output_tokens


@dataclass(frozen=True)
class _Prepared:
    prompt: list[int]
    params: GenerationParams
    stops: list[str]
    stream: bool
    include_usage: bool


# --- the endpoints ----------------------------------------------------------------------------
def list_models(state: RouterState) -> oa.ModelList:
    # Listed only when it can be served: clients (the OpenAI SDK, benchmarks) take a listed
    # model as ready.
    cards = [oa.ModelCard(id=state.model_name, created=state.created)]
    return oa.ModelList(data=cards if state.chains.has_complete_chain() else [])


async def serve_chat(
    state: RouterState, req: oa.ChatCompletionRequest, request: Request
) -> Response:
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidInput("top_logprobs", "top_logprobs needs logprobs: true")
    prompt = state.tokenizer.chat([msg.template_fields() for msg in req.messages])
    max_tokens = req.max_completion_tokens or req.max_tokens
    prep = _prepare(state, req, prompt, "messages", max_tokens)
    return await _serve(state, prep, request, ChatRenderer)


async def serve_completion(
    state: RouterState, req: oa.CompletionRequest, request: Request
) -> Response:
    if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], str):
        if len(req.prompt) != 1:
            raise InvalidInput("prompt", "only one prompt per request is supported")
        prompt = state.tokenizer.encode(str(req.prompt[0]))
    elif isinstance(req.prompt, list):
        prompt = [int(t) for t in req.prompt]
    else:
        prompt = state.tokenizer.encode(req.prompt)
    prep = _prepare(state, req, prompt, "prompt", req.max_tokens)
    return await _serve(state, prep, request, CompletionRenderer)


# --- shared by both ---------------------------------------------------------------------------
def _prepare(
    state: RouterState,
    req: oa._Generate,
    prompt: list[int],
    prompt_param: str,
    max_tokens: int | None,
) -> _Prepared:
    if req.model != state.model_name:
        raise ModelNotFound(
            f"The model {req.model!r} does not exist; this endpoint serves {state.model_name!r}"
        )
    stops = req.stop_list()  # at most MAX_STOP_SEQUENCES (checked by the request model)
    if not prompt:
        raise InvalidInput(prompt_param, "the prompt is empty")
    if len(prompt) > state.max_input_tokens:
        raise PromptTooLong(
            prompt_param,
            f"the prompt has {len(prompt)} tokens; this deployment accepts at most "
            f"{state.max_input_tokens} input tokens",
        )
    if max_tokens is not None and max_tokens > state.max_output_tokens:
        raise InvalidInput(
            "max_tokens",
            f"{max_tokens} is more than this deployment's {state.max_output_tokens} output tokens",
        )
    if any(t < 0 or t >= state.tokenizer.vocab_size for t in prompt):
        raise InvalidInput(prompt_param, f"token ids must be in [0, {state.tokenizer.vocab_size})")
    seed = req.seed if req.seed is not None else random.SystemRandom().randrange(2**62)
    params = GenerationParams(
        max_tokens=max_tokens or state.max_output_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=seed % 2**63,
        eos_ids=frozenset(state.tokenizer.eos_ids),
        top_logprobs=req.top_logprobs_wanted(),
    )
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return _Prepared(prompt, params, stops, bool(req.stream), include_usage)


async def _serve(
    state: RouterState, prep: _Prepared, request: Request, renderer: type[Renderer]
) -> Response:
    t0 = time.perf_counter()
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        run = await _unless_gone(
            gone,
            state.queue.admit(
                state.chains,
                len(prep.prompt),
                prep.params,
                observe_hop=lambda server, s: state.metrics.hop.labels(server).observe(s),
                observe_failover=state.metrics.failovers.inc,
            ),
        )
        state.metrics.route_cost.observe(run.route_cost_s)
        rid = renderer.new_id()
        logprobs = prep.params.top_logprobs is not None
        if prep.stream:
            # Nothing goes out before the first token: a failure until then is a plain error.
            tokens = generate(run, prep.prompt, prep.params, state.failover)
            try:
                first = await _unless_gone(gone, _first(tokens, t0))
            except BaseException:
                run.close_soon()
                await tokens.aclose()
                raise
            headers = {CHAIN_HEADER: ">".join(run.chain)}  # after a failover in the prefill
            outcome = request.scope.setdefault("state", {})  # where a stream's error is told
            render = renderer(
                state.tokenizer, state.model_name, rid, int(time.time()), logprobs=logprobs
            )
            body = _sse(state, run, prep, render, t0, first, tokens, outcome)
            return StreamingResponse(body, media_type="text/event-stream", headers=headers)
        try:
            text, finish, n_out, outs = await _unless_gone(gone, _whole(state, run, prep, t0))
        finally:
            run.close_soon()  # idempotent; at once if the client left or we were cancelled
    finally:
        gone.cancel()
    render = renderer(state.tokenizer, state.model_name, rid, int(time.time()), logprobs=logprobs)
    answer = render.whole(text, finish, outs, usage(len(prep.prompt), n_out))
    headers = {CHAIN_HEADER: ">".join(run.chain)}  # after a failover: the chain that finished it
    return JSONResponse(answer.model_dump(exclude_none=False), headers=headers)


@dataclass(frozen=True)
class _First:
    token: StepToken | None  # None: the generation ended without a token
    after_s: float  # since the request arrived


async def _first(tokens: AsyncIterator[StepToken], t0: float) -> _First:
    try:
        token: StepToken | None = await anext(tokens)
    except StopAsyncIteration:
        token = None
    return _First(token, time.perf_counter() - t0)


async def _unless_gone(gone: asyncio.Future[None], coro: Coroutine[Any, Any, T]) -> T:
    """The result of `coro` (or its exception, raised); ClientGone if the client left first
    (then `coro` is cancelled)."""
    work = asyncio.ensure_future(coro)
    try:
        watched: set[asyncio.Future[Any]] = {work, gone}
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        raise ClientGone()
    return work.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _whole(
    state: RouterState, run: ChainRun, prep: _Prepared, t0: float
) -> tuple[str, str, int, list[StepToken]]:
    text = TextStream(state.tokenizer, prep.stops)
    parts: list[str] = []
    outs: list[StepToken] = []  # the tokens of the text (not the EOS), for logprobs
    finish, n_out, first_s = "length", 0, None
    try:
        async for out in generate(run, prep.prompt, prep.params, state.failover):
            first_s = first_s or time.perf_counter() - t0
            n_out += 1
            if out.token in prep.params.eos_ids:
                finish = "stop"
                break
            outs.append(out)
            parts.append(text.add(out.token))
            if text.stopped:
                finish = "stop"
                break
    finally:
        run.close_soon()
    parts.append(text.finish())
    _observe(state, t0, first_s, n_out)
    return "".join(parts), finish, n_out, outs


def _observe(state: RouterState, t0: float, first_s: float | None, n_out: int) -> None:
    m = state.metrics
    total = time.perf_counter() - t0
    m.latency.observe(total)
    if first_s is not None:
        m.ttft.observe(first_s)
        if n_out > 1:
            m.tpot.observe((total - first_s) / (n_out - 1))


def _event(obj: BaseModel | dict[str, object]) -> bytes:
    data = obj.model_dump() if isinstance(obj, BaseModel) else obj
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


async def _then(
    first: StepToken | None, rest: AsyncIterator[StepToken]
) -> AsyncIterator[StepToken]:
    if first is None:
        return
    yield first
    async for out in rest:
        yield out


async def _sse(
    state: RouterState,
    run: ChainRun,
    prep: _Prepared,
    render: Renderer,
    t0: float,
    first: _First,
    rest: AsyncGenerator[StepToken, None],
    outcome: dict[str, Any],
) -> AsyncIterator[bytes]:
    pending: list[StepToken] = []  # tokens whose text goes out with the next chunk

    def chunk(content: str | None, finish: str | None) -> bytes:
        outs, pending[:] = list(pending), []
        return _event(render.chunk(content, finish, outs))

    text = TextStream(state.tokenizer, prep.stops)
    finish, n_out = "length", 0
    first_s = first.after_s if first.token is not None else None
    try:
        async for out in _then(first.token, rest):
            n_out += 1
            if out.token in prep.params.eos_ids:
                finish = "stop"
                break
            pending.append(out)
            delta = text.add(out.token)
            if delta:
                yield chunk(delta, None)
            if text.stopped:
                finish = "stop"
                break
        tail = text.finish()
        if tail:
            yield chunk(tail, None)
        yield chunk(None, finish)
        if prep.include_usage:
            yield _event(render.usage_chunk(usage(len(prep.prompt), n_out)))
    except TesseraError as exc:  # failover gave up: an OpenAI error event, then [DONE]
        outcome[OUTCOME_KEY] = str(error_response(exc).status_code)
        yield _event(error_event(exc))
    finally:
        run.close_soon()
        _observe(state, t0, first_s, n_out)
        await rest.aclose()
    yield b"data: [DONE]\n\n"
