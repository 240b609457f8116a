"""The generation loop: reserve a chain (or queue for one), relay each step, stream tokens, close.

Admission: a request takes the cheapest chain with room now (WS-RR); otherwise it waits in a
bounded queue (`max_queue` requests, each at most `max_wait_s`) for room, then gets `Busy`
(429 with a Retry-After estimated from the live queue, see `retry_after_s`). A request that
arrives while no complete chain is up (start-up, a stage restarting) waits for one within the
same `max_wait_s`, then gets `Unavailable` (503). A stage failure during generation is handled
by `failover.step`, and so is a straggling one (hedged); the first token may be hedged across
two chains from the start (see `failover.py`).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from tessera.api.stage import StepToken
from tessera.errors import Busy, Unavailable

from . import failover
from .chainrun import ChainRun
from .chains import LiveChains
from .stage_client import StageFailed, StepSampling

__all__ = ["ChainRun", "GenerationParams", "generate", "reserve", "retry_after_s"]

MAX_RETRY_AFTER_S = 300.0  # a sanity cap: past this the estimate says little


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    eos_ids: frozenset[int]
    top_logprobs: int | None = None  # None: no logprobs; else alternatives per token (0..20)


def retry_after_s(
    *,
    wait_s: float | None,
    running_s: Sequence[float],
    queued_ahead: int,
    request_s: float | None,
) -> float:
    """Seconds after which a refused request can expect room (pure; whole seconds, at least 1).

    `wait_s`: WS-RR's wait of the best chain (until its servers have room for this request),
    None or inf when unknown. `running_s`: the remaining time of each running request of this
    router. `queued_ahead`: requests waiting before this one. `request_s`: how long one request
    takes on the best chain (no wait). Each request that ends lets one waiting request start;
    once every running request has been replaced, the next round ends `request_s` later.
    """
    running = sorted(max(r, 0.0) for r in running_s if math.isfinite(r))
    known = wait_s if wait_s is not None and math.isfinite(wait_s) and wait_s > 0 else None
    estimate: float | None = known
    if running:
        rounds, i = divmod(max(queued_ahead, 0), len(running))
        per_round = request_s if request_s is not None and request_s > 0 else running[-1]
        queue = running[i] + rounds * per_round
        estimate = queue if estimate is None else max(estimate, queue)
    if estimate is None:  # the room is held by sessions we cannot see the end of
        per_request = request_s if request_s is not None and math.isfinite(request_s) else 1.0
        estimate = per_request * (max(queued_ahead, 0) + 1)
    return float(max(1, math.ceil(min(estimate, MAX_RETRY_AFTER_S) - 1e-9)))


async def reserve(
    chains: LiveChains,
    prompt_tokens: int,
    params: GenerationParams,
    *,
    max_wait_s: float,
    max_queue: int | None = None,
) -> ChainRun:
    """Pick the cheapest chain with room (WS-RR) and open a session on each of its stages.

    Waits at most `max_wait_s` for room (or, while none is up, for a complete chain), and only
    if fewer than `max_queue` requests are already waiting: then Busy (429, Retry-After from
    the live queue) when chains are up but full, Unavailable (503) when no complete chain is up.
    """
    deadline = time.monotonic() + max_wait_s
    request_id = f"req-{uuid.uuid4().hex[:20]}"
    sampling = StepSampling(
        params.temperature, params.top_p, params.seed, top_logprobs=params.top_logprobs or 0
    )
    wait_s: float | None = None  # WS-RR's wait of the best chain, when it knows one
    queued = False
    attempt = 0  # each attempt opens sessions under its own id (a late close cannot hit them)

    def busy(message: str) -> Busy:
        ahead = chains.waiting - (1 if queued else 0)
        estimate = retry_after_s(
            wait_s=wait_s,
            running_s=chains.running_remaining_s(time.monotonic()),
            queued_ahead=ahead,
            request_s=request_s(),
        )
        return Busy(message, retry_after_s=estimate)

    def request_s() -> float | None:  # one request's service time, ignoring load
        best = chains.choose_unloaded(prompt_tokens, params.max_tokens)
        return best.service_s if best is not None else None

    def no_chain() -> Unavailable:
        return Unavailable("no complete chain of stages is up", hint="retry later")

    try:
        while True:
            choice = chains.choose(prompt_tokens, params.max_tokens)
            complete = choice is not None or chains.has_complete_chain()
            if choice is None:
                wait_s = None  # no chain up, or full with sessions we cannot see the end of
            elif choice.wait_s <= 0.0:
                run = ChainRun(
                    chains,
                    [],
                    request_id,
                    sampling,
                    choice.cost_s,
                    max_length=prompt_tokens + params.max_tokens,
                    prompt_tokens=prompt_tokens,
                    epoch=attempt,
                )
                attempt += 1
                try:
                    await run.open(chains.hops(choice.chain), time.monotonic() + choice.service_s)
                    return run
                except Busy:
                    wait_s = None  # the worker refused: our view of its room was wrong
                except StageFailed as exc:
                    chains.mark_down(exc.server)
                    continue  # try the next best chain at once
                except BaseException:  # cancelled (client gone) while opening: free what opened
                    run.close_soon()
                    raise
            else:
                wait_s = choice.wait_s
            remaining = deadline - time.monotonic()
            if not queued and remaining > 0:
                if max_queue is not None and chains.waiting >= max_queue:
                    if not complete:
                        raise no_chain()
                    raise busy(
                        f"no chain of stages has room now and {chains.waiting} requests "
                        "are already waiting"
                    )
                queued = True
                chains.waiting += 1
            if remaining <= 0:
                if not complete:
                    raise no_chain()
                raise busy("no chain of stages has room for this request now")
            await chains.wait_change(min(remaining, 0.25))
    finally:
        if queued:
            chains.waiting -= 1


async def generate(
    run: ChainRun,
    prompt: list[int],
    params: GenerationParams,
    policy: failover.FailoverPolicy | None = None,
) -> AsyncGenerator[StepToken, None]:
    """Prefill, then one decode step per token; stops at EOS or `max_tokens`. Always closes.

    A failed stage is replaced mid-request (`failover.step`), invisibly to the caller."""
    policy = policy or failover.FailoverPolicy()
    try:
        run.tokens = list(prompt)
        out = await failover.step(run, prompt, 0, policy, first_token=True)
        for _ in range(params.max_tokens):
            run.tokens.append(out.token)
            yield out
            if out.token in params.eos_ids or len(run.tokens) - len(prompt) >= params.max_tokens:
                return
            out = await failover.step(run, [out.token], len(run.tokens) - 1, policy)
    finally:
        run.close_soon()
