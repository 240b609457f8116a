"""The generation loop: reserve a chain, relay each step through it, stream tokens, close.

A `ChainRun` owns one request's sessions (one per hop) and its token history (prompt plus
generated tokens): everything needed to rebuild the KV caches on another chain by replaying the
history, because sampling is a function of `(seed, position)` only. Sessions are closed when
the run ends, fails or is cancelled (client disconnect), on a task of their own so that a
cancellation cannot skip the close.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from tessera.api.stage import StepToken
from tessera.errors import Busy, Unavailable

from .chains import Hop, LiveChains
from .stage_client import SamplingHeaders, StageFailed, Tensor

log = logging.getLogger("tessera.router")
_background: set[asyncio.Task[None]] = set()  # close tasks, kept referenced until done


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    eos_ids: frozenset[int]


@dataclass
class ChainRun:
    chains: LiveChains
    hops: list[Hop]
    session_id: str
    sampling: SamplingHeaders
    route_cost_s: float
    tokens: list[int] = field(default_factory=list)  # prompt + generated: the replay history
    observe_hop: Callable[[str, float], None] | None = None  # (server, seconds) of each hop
    closed: bool = False

    @property
    def chain(self) -> tuple[str, ...]:
        return tuple(h.server for h in self.hops)

    async def step(self, new_tokens: list[int], position: int) -> StepToken:
        """Relay one step (hub and spoke): token ids in, the last stage's sampled token out."""
        x: Tensor | StepToken = Tensor.tokens(new_tokens)
        for i, hop in enumerate(self.hops):
            if not isinstance(x, Tensor):
                raise StageFailed(hop.server, "a stage before the last returned a token")
            last = i == len(self.hops) - 1
            t0 = time.perf_counter()
            x = await self.chains.client(hop.server).step(
                self.session_id, x, position, self.sampling if last else None
            )
            if self.observe_hop is not None:
                self.observe_hop(hop.server, time.perf_counter() - t0)
        if not isinstance(x, StepToken):
            raise StageFailed(self.hops[-1].server, "the last stage did not return a token")
        return x

    def close_soon(self) -> None:
        """Close every session on its own task (survives the caller's cancellation)."""
        if self.closed:
            return
        self.closed = True
        task = asyncio.get_running_loop().create_task(self._close_all())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _close_all(self) -> None:
        async def one(hop: Hop) -> None:
            try:
                await self.chains.client(hop.server).close(self.session_id)
            except Exception as exc:  # the worker expires it anyway; say so and move on
                log.info("closing %s on %s failed: %s", self.session_id, hop.server, exc)
            finally:
                self.chains.closed(hop.server, self.session_id)

        await asyncio.gather(*(one(h) for h in self.hops))


async def reserve(
    chains: LiveChains,
    prompt_tokens: int,
    params: GenerationParams,
    *,
    max_wait_s: float,
) -> ChainRun:
    """Pick the cheapest chain with room (WS-RR) and open a session on each of its stages.

    Waits at most `max_wait_s` for room (Busy after that) and raises Unavailable when no
    complete chain is up.
    """
    deadline = time.monotonic() + max_wait_s
    session_id = f"req-{uuid.uuid4().hex[:20]}"
    max_length = prompt_tokens + params.max_tokens
    sampling = SamplingHeaders(params.temperature, params.top_p, params.seed)
    last_wait = 1.0
    while True:
        choice = chains.choose(prompt_tokens, params.max_tokens)
        if choice is None:
            if not chains.has_complete_chain():
                raise Unavailable("no complete chain of stages is up", hint="retry later")
            last_wait = 1.0  # chains exist but are full with sessions we cannot see the end of
        elif choice.wait_s <= 0.0:
            hops = chains.hops(choice.chain)
            expected_end = time.monotonic() + choice.service_s
            run = ChainRun(chains, hops, session_id, sampling, choice.cost_s, list())
            try:
                await _open_all(chains, run, max_length, expected_end)
                return run
            except Busy as exc:
                last_wait = exc.retry_after_s
            except StageFailed as exc:
                chains.mark_down(exc.server)
                continue  # try the next best chain at once
        else:
            last_wait = choice.wait_s
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Busy(
                "no chain of stages has room for this request now",
                retry_after_s=max(min(last_wait, 60.0), 1.0),
            )
        await chains.wait_change(min(remaining, 0.25))


async def _open_all(chains: LiveChains, run: ChainRun, max_length: int, end_s: float) -> None:
    """Open the session on every hop; on any failure close the ones that opened and re-raise."""

    async def one(hop: Hop) -> None:
        try:
            slots = await chains.client(hop.server).open(
                run.session_id, hop.start_block, hop.end_block, max_length
            )
        except Busy:
            chains.refused(hop.server)
            raise
        chains.opened(hop.server, run.session_id, slots, end_s)

    results = await asyncio.gather(*(one(h) for h in run.hops), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        opened = [h for h, r in zip(run.hops, results, strict=True) if r is None]
        failed_run = ChainRun(chains, opened, run.session_id, run.sampling, run.route_cost_s)
        failed_run.close_soon()
        run.closed = True
        stage_failed = [e for e in errors if isinstance(e, StageFailed)]
        raise stage_failed[0] if stage_failed else errors[0]


async def generate(
    run: ChainRun, prompt: list[int], params: GenerationParams
) -> AsyncIterator[StepToken]:
    """Prefill, then one decode step per token; stops at EOS or `max_tokens`. Always closes."""
    try:
        run.tokens = list(prompt)
        out = await run.step(prompt, 0)
        for _ in range(params.max_tokens):
            run.tokens.append(out.token)
            yield out
            if out.token in params.eos_ids or len(run.tokens) - len(prompt) >= params.max_tokens:
                return
            out = await run.step([out.token], len(run.tokens) - 1)
    finally:
        run.close_soon()
