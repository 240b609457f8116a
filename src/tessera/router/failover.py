"""Mid-request failover: a stage died, so route the request to another chain and replay it.

When a step fails (connection refused or reset, timeout, 5xx, or the stage no longer knows the
session), the failed stage is marked down (`StageDirectory.mark_down`), the request's other
sessions are closed, WS-RR picks the cheapest chain among the servers still up (it may share
stages with the old chain or differ entirely), new sessions are opened on it, and the whole
history (prompt plus tokens generated so far) is replayed there in one prefill. The last stage
samples from `(seed, position)` only, so the replay yields the token the failed step would
have given: the client sees a pause, never a lost or repeated token. If no chain has room
within `timeout_s` the request fails with `Unavailable` (503, or an error event in a stream);
`timeout_s` is long enough by default to see a killed stage restart (its down mark ends at the
first successful probe, see `chains.py`), so a pool without a replica still finishes the answer.

Stragglers (a stage that is slow or frozen, not dead) are hedged rather than waited on: a hop
that overruns its adaptive deadline (`stragglers.py`) marks the stage suspect and starts a
`fork` of the run on a chain without it, replaying the history there; the first of the two to
give the token wins and the other is cancelled and its sessions closed. The first token of a
request may be hedged the same way from the start, on an idle chain without the chain's most
erratic stage, as often as the measured spread of step times asks and the budget allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

from tessera.api.stage import StepToken
from tessera.errors import Busy, Unavailable

from .chainrun import ChainRun, SessionLost
from .stage_client import StageFailed

log = logging.getLogger("tessera.router")


@dataclass(frozen=True)
class FailoverPolicy:
    timeout_s: float = 30.0  # per failure: how long to look for a chain with room (or a restart)
    max_failovers: int = 8  # per request: then give up (a pool that keeps dying)


async def step(
    run: ChainRun,
    new_tokens: list[int],
    position: int,
    policy: FailoverPolicy,
    *,
    first_token: bool = False,
) -> StepToken:
    """One step of `run`; on a stage failure, fail over and replay until it succeeds or the
    policy gives up. `run.tokens` must end with `new_tokens`, starting at `position`.
    `first_token`: the prefill, which may be hedged from the start (see the module doc)."""
    try:
        return await _hedged(run, new_tokens, position, first_token)
    except StageFailed as exc:
        failure = exc
    while True:
        await recover(run, failure, policy)
        try:
            return await _hedged(run, run.tokens, 0, False)  # rebuild every KV cache at once
        except StageFailed as exc:
            failure = exc


async def _hedged(run: ChainRun, tokens: list[int], position: int, first: bool) -> StepToken:
    """`run.relay`, raced against a fork when a hop straggles (or from the start: `first`)."""
    straggler: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def overrun(server: str) -> None:
        if not straggler.done():
            straggler.set_result(server)

    primary = asyncio.ensure_future(run.relay(tokens, position, overrun))
    fork: ChainRun | None = None
    reason: Literal["first_token", "straggler"] = "first_token"
    try:
        avoid = _first_hedge_avoid(run) if first else None
        if avoid is not None:
            fork = await _open_fork(run, avoid)
        if fork is None:
            watched: set[asyncio.Future[object]] = {primary, straggler}  # type: ignore[arg-type]
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if primary.done():
                return primary.result()
            slow = straggler.result()
            run.chains.directory.suspect(slow)
            fork = await _open_fork(run, {slow})
            reason = "straggler"
            if fork is None:  # nowhere to hedge: wait for the stage (or its step timeout)
                return await primary
        return await _race(run, primary, fork, reason)
    finally:
        if not primary.done():
            primary.cancel()
        if fork is not None and not fork.closed:
            fork.close_soon()


def _first_hedge_avoid(run: ChainRun) -> set[str] | None:
    """The stage a first-token hedge should avoid (the chain's widest-spread one), or None when
    this request is not to be hedged (spread too low, or over the budget)."""
    chains = run.chains
    spread, worst = max(
        ((chains.stragglers.times(s).spread(), s) for s in run.chain), default=(1.0, "")
    )
    if not chains.stragglers.should_hedge(
        spread, len(run.tokens) * chains.directory.problem.num_blocks
    ):
        return None
    return {worst}


async def _open_fork(run: ChainRun, avoid: set[str]) -> ChainRun | None:
    """A fork of `run` opened on the best chain with room now that avoids `avoid`; None if
    there is none (a hedge is never worth waiting for)."""
    chains = run.chains
    remaining_out = max(run.max_length - len(run.tokens), 1)
    choice = chains.choose(len(run.tokens), remaining_out, avoid=avoid)
    if choice is None or choice.wait_s > 0.0:
        return None
    fork = run.fork()
    try:
        await fork.open(chains.directory.hops(choice.chain), time.monotonic() + choice.service_s)
    except Busy:
        return None
    except StageFailed as exc:
        chains.directory.mark_down(exc.server)
        return None
    return fork


async def _race(
    run: ChainRun,
    primary: asyncio.Future[StepToken],
    fork: ChainRun,
    reason: Literal["first_token", "straggler"],
) -> StepToken:
    """The first of `primary` and a replay of the history on `fork` to give the token wins;
    the loser is cancelled (its sessions closed) and its work counted as hedging's extra."""
    chains = run.chains
    log.info("request %s: %s hedge on %s", run.request_id, reason, ">".join(fork.chain))
    work_before = run.work
    hedge = asyncio.ensure_future(fork.relay(run.tokens, 0))
    try:
        pending: set[asyncio.Future[StepToken]] = {primary, hedge}
        primary_failure = StageFailed(run.chain[0] if run.chain else "?", "no result")
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in (primary, hedge):  # the primary first when both are done
                if task not in done:
                    continue
                exc = task.exception()
                if exc is None:
                    won = task is hedge
                    loser_work = run.work - work_before if won else fork.work
                    chains.stragglers.hedged(reason, "hedge" if won else "primary", loser_work)
                    if won:
                        primary.cancel()
                        run.adopt(fork)
                    return task.result()
                if not isinstance(exc, StageFailed):
                    raise exc
                if task is primary:
                    primary_failure = exc
                if not isinstance(exc, SessionLost):
                    chains.directory.mark_down(exc.server)
        chains.stragglers.hedged(reason, "none", fork.work)
        raise primary_failure  # both failed: the caller fails the run over
    finally:
        if not hedge.done():
            hedge.cancel()


async def recover(run: ChainRun, failure: StageFailed, policy: FailoverPolicy) -> None:
    """Put `run` on a new chain (sessions opened, caches empty) or raise Unavailable."""
    chains = run.chains
    if not isinstance(failure, SessionLost):  # a stage that lost our session is still healthy
        chains.directory.mark_down(failure.server)
    if run.failovers >= policy.max_failovers:
        raise Unavailable(f"gave up after {run.failovers} failovers; last: {failure}")
    log.warning("request %s: %s; re-routing", run.request_id, failure)
    await run.release(failure.server)
    deadline = time.monotonic() + policy.timeout_s
    remaining_out = max(run.max_length - len(run.tokens), 1)
    while True:
        choice = chains.choose(len(run.tokens), remaining_out)
        if choice is not None and choice.wait_s <= 0.0:
            try:
                await run.reopen(
                    chains.directory.hops(choice.chain), time.monotonic() + choice.service_s
                )
            except Busy:
                pass  # wait for room below
            except StageFailed as exc:
                chains.directory.mark_down(exc.server)
                continue  # the next best chain at once
            else:
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
