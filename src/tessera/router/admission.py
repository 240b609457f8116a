"""Admission: a request takes the cheapest chain with room now (WS-RR), or queues for one.

The queue is bounded in number (`max_queue` requests waiting at once) and in time (each waits
at most `max_wait_s`). A request refused gets `Busy` (429 with a Retry-After estimated from the
live queue, see `retry_after_s`) when chains are up but full, or `Unavailable` (503) when no
complete chain is up (start-up, a stage restarting): it waits for one within the same
`max_wait_s` first. The worker stays the authority: an open it refuses means wait or try the
next chain.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tessera.errors import Busy, Unavailable

from .chainrun import ChainRun
from .chains import LiveChains
from .stage_client import StageFailed, StepSampling

MAX_RETRY_AFTER_S = 300.0  # a sanity cap: past this the estimate says little
WAIT_STEP_S = 0.25  # a queued request re-checks at least this often


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


class AdmissionQueue:
    """Requests waiting for room: the count is this queue's alone (`waiting`)."""

    def __init__(self, *, max_wait_s: float, max_queue: int | None = None) -> None:
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def admit(
        self,
        chains: LiveChains,
        prompt_tokens: int,
        params: GenerationParams,
        *,
        observe_hop: Callable[[str, float], None] | None = None,
        observe_failover: Callable[[], None] | None = None,
    ) -> ChainRun:
        """Pick the cheapest chain with room (WS-RR) and open a session on each of its stages.

        Waits at most `max_wait_s` for room (or, while none is up, for a complete chain), and
        only if fewer than `max_queue` requests are already waiting: then Busy (429,
        Retry-After from the live queue) when chains are up but full, Unavailable (503) when no
        complete chain is up. `observe_*`: the run's metrics hooks.
        """
        deadline = time.monotonic() + self.max_wait_s
        request_id = f"req-{uuid.uuid4().hex[:20]}"
        sampling = StepSampling(
            params.temperature, params.top_p, params.seed, top_logprobs=params.top_logprobs or 0
        )
        wait_s: float | None = None  # WS-RR's wait of the best chain, when it knows one
        queued = False
        attempt = 0  # each attempt opens sessions under its own id (a late close cannot hit them)

        def busy(message: str) -> Busy:
            best = chains.choose_unloaded(prompt_tokens, params.max_tokens)
            estimate = retry_after_s(
                wait_s=wait_s,
                running_s=chains.running_remaining_s(time.monotonic()),
                queued_ahead=self._waiting - (1 if queued else 0),
                request_s=best.service_s if best is not None else None,  # ignoring load
            )
            return Busy(message, retry_after_s=estimate)

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
                        observe_hop=observe_hop,
                        observe_failover=observe_failover,
                    )
                    attempt += 1
                    try:
                        expected_end_s = time.monotonic() + choice.service_s
                        await run.open(chains.directory.hops(choice.chain), expected_end_s)
                        return run
                    except Busy:
                        wait_s = None  # the worker refused: our view of its room was wrong
                    except StageFailed as exc:
                        chains.directory.mark_down(exc.server)
                        continue  # try the next best chain at once
                    except BaseException:  # cancelled (client gone) while opening: free it
                        run.close_soon()
                        raise
                else:
                    wait_s = choice.wait_s
                remaining = deadline - time.monotonic()
                if not queued and remaining > 0:
                    if self.max_queue is not None and self._waiting >= self.max_queue:
                        if not complete:
                            raise no_chain()
                        raise busy(
                            f"no chain of stages has room now and {self._waiting} requests "
                            "are already waiting"
                        )
                    queued = True
                    self._waiting += 1
                if remaining <= 0:
                    if not complete:
                        raise no_chain()
                    raise busy("no chain of stages has room for this request now")
                await chains.wait_change(min(remaining, WAIT_STEP_S))
        finally:
            if queued:
                self._waiting -= 1
