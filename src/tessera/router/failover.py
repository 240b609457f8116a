"""Mid-request failover: a stage died, so route the request to another chain and replay it.

When a step fails (connection refused or reset, timeout, 5xx, or the stage no longer knows the
session), the failed stage is marked down for `LiveChains.down_s`, the request's other
sessions are closed, WS-RR picks the cheapest chain among the servers still up (it may share
stages with the old chain or differ entirely), new sessions are opened on it, and the whole
history (prompt plus tokens generated so far) is replayed there in one prefill. The last stage
samples from `(seed, position)` only, so the replay yields the token the failed step would
have given: the client sees a pause, never a lost or repeated token. If no chain has room
within `timeout_s` the request fails with `Unavailable` (503, or an error event in a stream).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from tessera.api.stage import StepToken
from tessera.errors import Busy, Unavailable

from .chainrun import ChainRun, SessionLost
from .stage_client import StageFailed

log = logging.getLogger("tessera.router")


@dataclass(frozen=True)
class FailoverPolicy:
    timeout_s: float = 10.0  # per failure: how long to look for a chain with room
    max_failovers: int = 8  # per request: then give up (a pool that keeps dying)


async def step(
    run: ChainRun, new_tokens: list[int], position: int, policy: FailoverPolicy
) -> StepToken:
    """One step of `run`; on a stage failure, fail over and replay until it succeeds or the
    policy gives up. `run.tokens` must end with `new_tokens`, starting at `position`."""
    try:
        return await run.relay(new_tokens, position)
    except StageFailed as exc:
        failure = exc
    while True:
        await recover(run, failure, policy)
        try:
            return await run.relay(run.tokens, 0)  # rebuild every KV cache in one prefill
        except StageFailed as exc:
            failure = exc


async def recover(run: ChainRun, failure: StageFailed, policy: FailoverPolicy) -> None:
    """Put `run` on a new chain (sessions opened, caches empty) or raise Unavailable."""
    chains = run.chains
    if not isinstance(failure, SessionLost):  # a stage that lost our session is still healthy
        chains.mark_down(failure.server)
    if run.failovers >= policy.max_failovers:
        raise Unavailable(f"gave up after {run.failovers} failovers; last: {failure}")
    log.warning("request %s: %s; re-routing", run.request_id, failure)
    await run.release(failure.server)
    deadline = time.monotonic() + policy.timeout_s
    remaining_out = max(run.max_length - len(run.tokens), 1)
    while True:
        choice = chains.choose(len(run.tokens), remaining_out)
        if choice is not None and choice.wait_s <= 0.0:
            run.epoch += 1
            try:
                await run.open(chains.hops(choice.chain), time.monotonic() + choice.service_s)
            except Busy:
                pass  # wait for room below
            except StageFailed as exc:
                chains.mark_down(exc.server)
                continue  # the next best chain at once
            else:
                run.failovers += 1
                if run.observe_failover is not None:
                    run.observe_failover()
                log.warning(
                    "request %s continues on %s (replaying %d tokens)",
                    run.request_id,
                    ">".join(run.chain),
                    len(run.tokens),
                )
                return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unavailable(
                f"stage {failure.server} failed and no other chain of stages had room "
                f"within {policy.timeout_s:g} s",
                hint="retry later",
            )
        await chains.wait_change(min(remaining, 0.25))
