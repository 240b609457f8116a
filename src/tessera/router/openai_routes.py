"""`/v1/models`, `/v1/chat/completions`, `/v1/completions` (streaming and not).

The model is listed only while a complete chain of stages is up; a request that arrives before
(start-up) waits for one within `max_wait_s` (see `generate.reserve`). A streamed answer starts
(200, headers, first chunk) only once the first token exists: its time to first token is the
real one, and a failure before it is a plain OpenAI error with its HTTP status. The chat role
rides on the first chunk that goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tessera.api import openai as oa
from tessera.api.stage import StepToken
from tessera.errors import InvalidInput, TesseraError

from .chains import LiveChains
from .errors import GENERATE_ERRORS, ModelNotFound, PromptTooLong, error_event, error_response
from .failover import FailoverPolicy
from .generate import ChainRun, GenerationParams, generate, reserve
from .guard import CLIENT_GONE, OUTCOME_KEY
from .logprobs import chat_logprobs, completion_logprobs
from .metrics import RouterMetrics
from .text import TextStream
from .tokenizer import Tokenizer

CHAIN_HEADER = "x-tessera-chain"


@dataclass
class RouterState:
    model_name: str
    tokenizer: Tokenizer
    chains: LiveChains
    metrics: RouterMetrics
    max_input_tokens: int
    max_output_tokens: int
    max_wait_s: float
    created: int
    max_queue: int | None = None
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)


@dataclass(frozen=True)
class _Prepared:
    prompt: list[int]
    params: GenerationParams
    stops: list[str]
    stream: bool
    include_usage: bool


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


def build_routes(state: RouterState) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models", response_model=oa.ModelList, responses={401: GENERATE_ERRORS[401]})
    async def models() -> Response:
        # Listed only when it can be served: clients (the OpenAI SDK, benchmarks) take a listed
        # model as ready.
        cards = [oa.ModelCard(id=state.model_name, created=state.created)]
        body = oa.ModelList(data=cards if state.chains.has_complete_chain() else [])
        return JSONResponse(body.model_dump())

    @api.post("/v1/chat/completions", responses={200: _ok(oa.ChatCompletion), **GENERATE_ERRORS})
    async def chat(req: oa.ChatCompletionRequest, request: Request) -> Response:
        try:
            if req.top_logprobs is not None and not req.logprobs:
                raise InvalidInput("top_logprobs", "top_logprobs needs logprobs: true")
            messages = [msg.template_fields() for msg in req.messages]
            prompt = state.tokenizer.chat(messages)
            prep = _prepare(
                state, req, prompt, "messages", req.max_completion_tokens or req.max_tokens
            )
        except TesseraError as exc:
            return _fail(state, exc)
        return await _serve(state, prep, request, chat=True)

    @api.post("/v1/completions", responses={200: _ok(oa.Completion), **GENERATE_ERRORS})
    async def completions(req: oa.CompletionRequest, request: Request) -> Response:
        try:
            if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], str):
                if len(req.prompt) != 1:
                    raise InvalidInput("prompt", "only one prompt per request is supported")
                prompt = state.tokenizer.encode(str(req.prompt[0]))
            elif isinstance(req.prompt, list):
                prompt = [int(t) for t in req.prompt]
            else:
                prompt = state.tokenizer.encode(req.prompt)
            prep = _prepare(state, req, prompt, "prompt", req.max_tokens)
        except TesseraError as exc:
            return _fail(state, exc)
        return await _serve(state, prep, request, chat=False)

    return api


def _fail(state: RouterState, exc: TesseraError) -> Response:
    return error_response(exc)  # counted with every other outcome by `guard.CountOutcomes`


def _ok(model: type[Any]) -> dict[str, Any]:
    return {
        "model": model,
        "description": "The answer (JSON), or with `stream: true` server-sent events of chunks",
        "content": {
            "text/event-stream": {
                "schema": {  # one server-sent event: JSON chunk (or error) text, last `[DONE]`
                    "type": "object",
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    "required": ["data"],
                }
            }
        },
    }


async def _serve(state: RouterState, prep: _Prepared, request: Request, *, chat: bool) -> Response:
    t0 = time.perf_counter()
    # A client that leaves while queued, or during a non-streamed answer, frees its place and
    # its sessions at once (a streamed answer is stopped by the server when the client leaves).
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        reserved = await _unless_gone(
            gone,
            reserve(
                state.chains,
                len(prep.prompt),
                prep.params,
                max_wait_s=state.max_wait_s,
                max_queue=state.max_queue,
            ),
        )
        if reserved is None:
            return _client_gone(state)
        if isinstance(reserved, TesseraError):
            return _fail(state, reserved)
        if isinstance(reserved, BaseException):
            raise reserved
        run = reserved
        run.observe_hop = lambda server, s: state.metrics.hop.labels(server).observe(s)
        run.observe_failover = state.metrics.failovers.inc
        state.metrics.route_cost.observe(run.route_cost_s)
        headers = {CHAIN_HEADER: ">".join(run.chain)}
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if prep.stream:
            # Nothing goes out before the first token: a failure until then is a plain error.
            tokens = generate(run, prep.prompt, prep.params, state.failover)
            first = await _unless_gone(gone, _first(tokens, t0))
            if first is None or isinstance(first, BaseException):
                run.close_soon()
                await tokens.aclose()
                if first is None:
                    return _client_gone(state)
                if isinstance(first, TesseraError):
                    return _fail(state, first)
                raise first
            headers[CHAIN_HEADER] = ">".join(run.chain)  # a failover in the prefill moved it
            outcome = request.scope.setdefault("state", {})  # where a stream's error is told
            body = _sse(state, run, prep, rid, chat, t0, first, tokens, outcome)
            return StreamingResponse(body, media_type="text/event-stream", headers=headers)
        try:
            done = await _unless_gone(gone, _whole(state, run, prep, t0))
        finally:
            run.close_soon()  # idempotent; at once if the client left or we were cancelled
    finally:
        gone.cancel()
    if done is None:
        return _client_gone(state)
    if isinstance(done, BaseException):
        raise done
    result = done
    if isinstance(result, Response):
        return result
    content, finish, n_out, outs = result
    wanted = prep.params.top_logprobs is not None
    usage = oa.Usage(
        prompt_tokens=len(prep.prompt),
        completion_tokens=n_out,
        total_tokens=len(prep.prompt) + n_out,
    )
    created = int(time.time())
    resp: Any
    if chat:
        resp = oa.ChatCompletion(
            id=rid,
            created=created,
            model=state.model_name,
            choices=[
                oa.ChatChoice(
                    message=oa.AssistantMessage(content=content),
                    finish_reason=finish,
                    logprobs=chat_logprobs(state.tokenizer, outs) if wanted else None,
                )
            ],
            usage=usage,
        )
    else:
        resp = oa.Completion(
            id=rid,
            created=created,
            model=state.model_name,
            choices=[
                oa.TextChoice(
                    text=content,
                    finish_reason=finish,
                    logprobs=completion_logprobs(state.tokenizer, outs, 0)[0] if wanted else None,
                )
            ],
            usage=usage,
        )
    headers[CHAIN_HEADER] = ">".join(run.chain)  # after a failover: the chain that finished it
    return JSONResponse(resp.model_dump(exclude_none=False), headers=headers)


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


async def _unless_gone(gone: asyncio.Future[None], coro: Any) -> Any:
    """The result (or exception) of `coro`, or None if the client left first (then cancelled)."""
    work = asyncio.ensure_future(coro)
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        return None
    return work.exception() or work.result()


def _client_gone(state: RouterState) -> Response:
    return Response(status_code=int(CLIENT_GONE))  # nobody reads it: the client has gone


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _whole(
    state: RouterState, run: ChainRun, prep: _Prepared, t0: float
) -> tuple[str, str, int, list[StepToken]] | Response:
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
    except TesseraError as exc:
        return _fail(state, exc)
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


def _event(obj: Any) -> bytes:
    data = obj.model_dump() if hasattr(obj, "model_dump") else obj
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
    rid: str,
    chat: bool,
    t0: float,
    first: _First,
    rest: AsyncGenerator[StepToken, None],
    outcome: dict[str, Any],
) -> AsyncIterator[bytes]:
    created = int(time.time())
    name = state.model_name
    role_due = chat  # the role goes on the first chunk sent

    wanted = prep.params.top_logprobs is not None
    pending: list[StepToken] = []  # tokens whose text goes out with the next chunk
    offset = 0  # completions' text_offset of the next token

    def chunk(content: str | None, finish: str | None) -> bytes:
        nonlocal role_due, offset
        outs, pending[:] = list(pending), []
        if chat:
            delta = oa.Delta(role="assistant" if role_due else None, content=content)
            role_due = False
            logprobs = chat_logprobs(state.tokenizer, outs) if wanted and outs else None
            return _event(
                oa.ChatCompletionChunk(
                    id=rid,
                    created=created,
                    model=name,
                    choices=[oa.ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)],
                ).model_dump(exclude_none=False)
            )
        text_logprobs = None
        if wanted and outs:
            text_logprobs, offset = completion_logprobs(state.tokenizer, outs, offset)
        return _event(
            oa.Completion(
                id=rid,
                created=created,
                model=name,
                choices=[
                    oa.TextChoice(text=content or "", finish_reason=finish, logprobs=text_logprobs)
                ],
            )
        )

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
        yield chunk(None if chat else "", finish)
        if prep.include_usage:
            usage = oa.Usage(
                prompt_tokens=len(prep.prompt),
                completion_tokens=n_out,
                total_tokens=len(prep.prompt) + n_out,
            )
            if chat:
                yield _event(
                    oa.ChatCompletionChunk(
                        id=rid, created=created, model=name, choices=[], usage=usage
                    )
                )
            else:
                yield _event(
                    oa.Completion(id=rid, created=created, model=name, choices=[], usage=usage)
                )
    except TesseraError as exc:  # failover gave up: an OpenAI error event, then [DONE]
        outcome[OUTCOME_KEY] = str(error_response(exc).status_code)
        yield b"data: " + json.dumps(error_event(exc)).encode() + b"\n\n"
    finally:
        run.close_soon()
        _observe(state, t0, first_s, n_out)
        await rest.aclose()
    yield b"data: [DONE]\n\n"
