"""One request's chain: its sessions (one per hop), its token history, relay and close.

A `ChainRun` owns everything needed to rebuild the KV caches on another chain by replaying the
history (prompt plus generated tokens), because sampling is a function of `(seed, position)`
only (see `failover.py`). Sessions are closed when the run ends, fails or is cancelled (client
disconnect), on a task of their own so that a cancellation cannot skip the close.

Each hop has a deadline learned from the stage's recent hop times (`stragglers.py`); a hop that
overruns it is reported to the caller (`overrun`), which hedges it, while the hop keeps going
(it may still win). A hedge is a `fork` of the run: same request, history and sampling, its own
sessions (a fresh epoch); the winner's chain is `adopt`ed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tessera.api.stage import StepToken
from tessera.errors import Busy, NotFound
from tessera.placement.wire import boundary

from .chains import LiveChains
from .directory import Hop
from .stage_client import StageFailed, StepSampling, Tensor

log = logging.getLogger("tessera.router")
_background: set[asyncio.Task[None]] = set()  # close tasks, kept referenced until done
CLOSE_WAIT_S = 2.0  # how long a failover waits for old sessions to close before re-opening
LOOP_LAG_S = 0.25  # a hop deadline that fires this late: the event loop was stalled


class _Epochs:
    """Session-id epochs shared by a run and its forks: every chain tried gets a new one."""

    def __init__(self, used: int) -> None:
        self.used = used

    def next(self) -> int:
        self.used += 1
        return self.used


class SessionLost(StageFailed):
    """A stage answered but no longer knows our session (it restarted or expired it)."""


class _Watchdog:
    """Calls `overrun(server)` once a hop has taken `deadline_s`: a timer, not a task, because
    it runs on every hop. A timer that fires late means the event loop itself was stalled (not
    the stage): the hop then gets another `grace_s` instead of being reported."""

    def __init__(
        self, server: str, deadline_s: float, grace_s: float, overrun: Callable[[str], None]
    ) -> None:
        self.server, self.grace_s, self.overrun = server, grace_s, overrun
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + deadline_s
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        if now - self._due > LOOP_LAG_S:
            self._due = now + self.grace_s
            self._handle = self._loop.call_at(self._due, self._fire)
            return
        self.overrun(self.server)

    def cancel(self) -> None:
        self._handle.cancel()


@dataclass
class ChainRun:
    chains: LiveChains
    hops: list[Hop]
    request_id: str
    sampling: StepSampling
    route_cost_s: float
    max_length: int  # tokens declared on every stage: prompt + max_tokens
    prompt_tokens: int = 0
    tokens: list[int] = field(default_factory=list)  # prompt + generated: the replay history
    observe_hop: Callable[[str, float], None] | None = None  # (server, seconds) of each hop
    observe_failover: Callable[[], None] | None = None
    failovers: int = 0  # chains rebuilt so far
    epoch: int = 0  # chains tried so far (each gets its own session id)
    closed: bool = False
    work: float = 0.0  # stage work sent by this run (block-tokens), for the hedging budget
    epochs: _Epochs | None = None

    def next_epoch(self) -> int:
        if self.epochs is None:
            self.epochs = _Epochs(self.epoch)
        return self.epochs.next()

    def begin(self, prompt: list[int]) -> None:
        """The history starts with the prompt (before the first step)."""
        self.tokens = list(prompt)

    def advance(self, token: int) -> None:
        """A token was generated: it joins the history (replayed on a failover)."""
        self.tokens.append(token)

    async def reopen(self, hops: list[Hop], expected_end_s: float) -> None:
        """After a failure: open a new chain for this run under a fresh epoch (a late close of
        the old sessions cannot hit the new ones); it counts as a failover once it is open."""
        self.epoch = self.next_epoch()
        await self.open(hops, expected_end_s)
        self.failovers += 1
        if self.observe_failover is not None:
            self.observe_failover()

    def fork(self) -> ChainRun:
        """A run of the same request on no chain yet (open it): a hedge or a replacement."""
        fork = dataclasses.replace(self, hops=[], work=0.0, closed=False, failovers=0)
        fork.epochs = self.epochs if self.epochs is not None else _Epochs(self.epoch)
        self.epochs = fork.epochs
        fork.epoch = fork.next_epoch()
        return fork

    def adopt(self, fork: ChainRun) -> None:
        """Continue on `fork`'s chain (it won a race): our old sessions close in the background."""
        _spawn(self._close(self.hops, self.session_id))
        self.hops, self.epoch = fork.hops, fork.epoch
        fork.closed = True  # its sessions are ours now

    @property
    def session_id(self) -> str:
        # A fresh id per chain: a late close of the old chain cannot hit the new sessions.
        return self.request_id if self.epoch == 0 else f"{self.request_id}.{self.epoch}"

    @property
    def chain(self) -> tuple[str, ...]:
        return tuple(h.server for h in self.hops)

    async def relay(
        self,
        new_tokens: list[int],
        position: int,
        overrun: Callable[[str], None] | None = None,
    ) -> StepToken:
        """One step through the chain (hub and spoke): token ids in, the sampled token out.
        `overrun(server)` is called when a hop takes longer than its stage's deadline."""
        x: Tensor | StepToken = Tensor.tokens(new_tokens)
        sid = self.session_id
        for i, hop in enumerate(self.hops):
            if not isinstance(x, Tensor):
                raise StageFailed(hop.server, "a stage before the last returned a token")
            last = i == len(self.hops) - 1
            work = len(new_tokens) * (hop.end_block - hop.start_block)
            self.work += work
            self.chains.stragglers.count_work(work)
            # The output crosses this stage's link and the next one's: the smaller dtype
            # (asked only for a compressed link: an exact one needs nothing extra).
            wire_dtype = None
            if not last:
                after = self.chains.directory.client(self.hops[i + 1].server).wire_dtype
                wire_dtype = boundary(self.chains.directory.client(hop.server).wire_dtype, after)
            x = await self._hop(
                hop.server, sid, x, position, last, len(new_tokens), overrun, wire_dtype
            )
        if not isinstance(x, StepToken):
            raise StageFailed(self.hops[-1].server, "the last stage did not return a token")
        return x

    async def _hop(
        self,
        server: str,
        sid: str,
        x: Tensor,
        position: int,
        last: bool,
        tokens: int,
        overrun: Callable[[str], None] | None,
        wire_dtype: str | None = None,
    ) -> Tensor | StepToken:
        client = self.chains.directory.client(server)
        times = self.chains.stragglers.times(server)
        deadline_s = times.deadline_s(tokens, self.chains.stragglers.policy)
        t0 = time.perf_counter()
        watchdog = None
        if deadline_s is not None and overrun is not None:
            watchdog = _Watchdog(server, deadline_s, self.chains.stragglers.policy.floor_s, overrun)
        try:
            sampling = self.sampling if last else None
            out = await client.step(sid, x, position, sampling, wire_dtype=wire_dtype)
        except NotFound as exc:
            raise SessionLost(server, str(exc)) from exc
        finally:
            if watchdog is not None:
                watchdog.cancel()
        elapsed = time.perf_counter() - t0
        # Censored at the deadline: one freeze must not inflate the next deadlines.
        times.record(tokens, min(elapsed, deadline_s) if deadline_s is not None else elapsed)
        if self.observe_hop is not None:
            self.observe_hop(server, elapsed)
        return out

    async def open(self, hops: list[Hop], expected_end_s: float) -> None:
        """Open a session on every hop of `hops` (then the run's chain); on failure close those
        that opened and re-raise (a StageFailed first, so that the caller marks it down)."""
        self.hops = hops
        sid = self.session_id

        async def one(hop: Hop) -> None:
            try:
                slots = await self.chains.directory.client(hop.server).open(
                    sid, hop.start_block, hop.end_block, self.max_length
                )
            except Busy:
                self.chains.refused(hop.server)
                raise
            self.chains.opened(hop.server, sid, slots, expected_end_s)

        results = await asyncio.gather(*(one(h) for h in hops), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            opened = [h for h, r in zip(hops, results, strict=True) if r is None]
            _spawn(self._close(opened, sid))
            self.hops = []
            stage_failed = [e for e in errors if isinstance(e, StageFailed)]
            raise stage_failed[0] if stage_failed else errors[0]

    async def release(self, failed: str) -> None:
        """Before a failover: close the current sessions. Healthy stages are awaited (briefly) so
        that their slots are free for the new chain; the failed stage is closed in the background."""
        hops, sid = self.hops, self.session_id
        self.hops = []
        healthy = [h for h in hops if h.server != failed]
        _spawn(self._close([h for h in hops if h.server == failed], sid))
        try:
            await asyncio.wait_for(self._close(healthy, sid), timeout=CLOSE_WAIT_S)
        except TimeoutError:
            log.info(
                "closing request %s on %s took over %s s", self.request_id, healthy, CLOSE_WAIT_S
            )

    def close_soon(self) -> None:
        """Close every session on its own task (survives the caller's cancellation)."""
        if self.closed:
            return
        self.closed = True
        _spawn(self._close(self.hops, self.session_id))

    async def _close(self, hops: list[Hop], sid: str) -> None:
        async def one(hop: Hop) -> None:
            try:
                await self.chains.directory.client(hop.server).close(sid)
            except Exception as exc:  # the worker expires it anyway; say so and move on
                log.info("closing %s on %s failed: %s", sid, hop.server, exc)
            finally:
                self.chains.slots.closed(hop.server, sid)

        await asyncio.gather(*(one(h) for h in hops))


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
