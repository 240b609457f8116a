"""The generation loop: reserve a chain (or queue for one), relay each step, stream tokens, close.

Admission: a request takes the cheapest chain with room now (WS-RR); otherwise it waits in a
bounded queue (`max_queue` requests, each at most `max_wait_s`) for room, then gets `Busy`
(429 with Retry-After). A stage failure during generation is handled by `failover.step`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tessera.api.stage import StepToken
from tessera.errors import Busy, Unavailable

from . import failover
from .chainrun import ChainRun
from .chains import LiveChains
from .stage_client import SamplingHeaders, StageFailed

__all__ = ["ChainRun", "GenerationParams", "generate", "reserve"]


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    eos_ids: frozenset[int]


async def reserve(
    chains: LiveChains,
    prompt_tokens: int,
    params: GenerationParams,
    *,
    max_wait_s: float,
    max_queue: int | None = None,
) -> ChainRun:
    """Pick the cheapest chain with room (WS-RR) and open a session on each of its stages.

    Waits at most `max_wait_s` for room, and only if fewer than `max_queue` requests are
    already waiting (Busy otherwise); raises Unavailable when no complete chain is up.
    """
    deadline = time.monotonic() + max_wait_s
    request_id = f"req-{uuid.uuid4().hex[:20]}"
    sampling = SamplingHeaders(params.temperature, params.top_p, params.seed)
    last_wait = 1.0
    queued = False
    attempt = 0  # each attempt opens sessions under its own id (a late close cannot hit them)
    try:
        while True:
            choice = chains.choose(prompt_tokens, params.max_tokens)
            if choice is None:
                if not chains.has_complete_chain():
                    raise Unavailable("no complete chain of stages is up", hint="retry later")
                last_wait = 1.0  # chains exist but are full with sessions we cannot see the end of
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
                except Busy as exc:
                    last_wait = exc.retry_after_s
                except StageFailed as exc:
                    chains.mark_down(exc.server)
                    continue  # try the next best chain at once
                except BaseException:  # cancelled (client gone) while opening: free what opened
                    run.close_soon()
                    raise
            else:
                last_wait = choice.wait_s
            remaining = deadline - time.monotonic()
            if not queued and remaining > 0:
                if max_queue is not None and chains.waiting >= max_queue:
                    raise Busy(
                        f"no chain of stages has room now and {chains.waiting} requests "
                        "are already waiting",
                        retry_after_s=max(min(last_wait, 60.0), 1.0),
                    )
                queued = True
                chains.waiting += 1
            if remaining <= 0:
                raise Busy(
                    "no chain of stages has room for this request now",
                    retry_after_s=max(min(last_wait, 60.0), 1.0),
                )
            await chains.wait_change(min(remaining, 0.25))
    finally:
        if queued:
            chains.waiting -= 1


async def generate(
    run: ChainRun,
    prompt: list[int],
    params: GenerationParams,
    policy: failover.FailoverPolicy | None = None,
) -> AsyncIterator[StepToken]:
    """Prefill, then one decode step per token; stops at EOS or `max_tokens`. Always closes.

    A failed stage is replaced mid-request (`failover.step`), invisibly to the caller."""
    policy = policy or failover.FailoverPolicy()
    try:
        run.tokens = list(prompt)
        out = await failover.step(run, prompt, 0, policy)
        for _ in range(params.max_tokens):
            run.tokens.append(out.token)
            yield out
            if out.token in params.eos_ids or len(run.tokens) - len(prompt) >= params.max_tokens:
                return
            out = await failover.step(run, [out.token], len(run.tokens) - 1, policy)
    finally:
        run.close_soon()
