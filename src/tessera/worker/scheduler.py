"""Continuous batching on one stage: one loop, one forward pass per iteration for every session
with work pending.

Steps arrive from the HTTP routes (any thread) with `submit`. Each iteration of the loop, on the
compute thread, takes every pending decode step (one token each) and fills the rest of a token
budget (`max_batch_tokens`) with prefill chunks, oldest first, then runs them as one packed
forward (`StageModel.forward_batch`, grouped by block range). Sessions join and leave between
iterations. A long prompt is prefilled a chunk per iteration, so that it never stalls the other
sessions' decodes for longer than one budget's worth of tokens (vLLM's chunked prefill).

A step that cannot run (session closed, position ahead, past its max_length) fails alone; a
forward that raises fails the steps of its group and leaves their caches as they were before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tessera.api import stage as wire
from tessera.errors import InvalidInput, NotFound, TesseraError

from .blocks import StageModel
from .sampling import Sampling, sample
from .sessions import Session

log = logging.getLogger("tessera.worker")
EFFICIENT_MIN_ROWS = 16
MAX_GATHER_S = 0.2


class PositionAhead(TesseraError):
    """A step starts after the session's end: a step in between is missing."""


Result = tuple[torch.Tensor | wire.StepToken, float]  # (output, compute seconds of its batches)


@dataclass(eq=False)
class Step:
    session: Session
    x: torch.Tensor  # [1, T] token ids or [1, T, H] hidden states
    position: int
    sampling: Sampling
    done: Callable[[Result | BaseException], None]  # called once, on the compute thread
    offset: int = 0  # tokens of x already run (chunked prefill)
    outputs: list[torch.Tensor] = field(default_factory=list)
    compute_s: float = 0.0
    started: bool = False

    @property
    def tokens(self) -> int:
        return int(self.x.shape[1])


@dataclass(frozen=True)
class BatchStats:
    sessions: int
    tokens: int
    compute_s: float


class Scheduler:
    def __init__(
        self,
        stage: StageModel,
        *,
        max_batch_tokens: int = 256,
        speed_factor: float = 1.0,
        min_rows: int = 0,
        gather: bool = True,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_tokens < 1:
            raise InvalidInput("--max-batch-tokens", "must be at least 1")
        self.stage = stage
        self.max_batch_tokens = max_batch_tokens
        self.speed_factor = speed_factor
        self.min_rows = min_rows  # batch invariance: pad each forward to this many rows
        # (and never split a prompt into chunks)
        self.on_batch = on_batch
        self._pending: list[Step] = []  # arrival order
        # Gathering: sessions that decoded lately (id -> monotonic s), and the last batch's time.
        self.gather = gather
        self._recent: dict[str, tuple[float, Session]] = {}
        self._last_batch_s = 0.0
        self._cond = threading.Condition()
        self._stopped = False

    def submit(self, step: Step) -> None:
        self.submit_many([step])

    def submit_many(self, steps: list[Step]) -> None:
        """Queue steps at once, so that they join the same forward."""
        with self._cond:
            if self._stopped:
                raise TesseraError("the stage is shutting down")
            self._pending.extend(steps)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def run_forever(self) -> None:
        """The loop; returns after `stop`. Runs on the compute thread."""
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if not self._stopped and self.gather:
                    self._gather()
                if self._stopped:
                    pending, self._pending = self._pending, []
                    break
            self.run_once()
        for step in pending:
            step.done(TesseraError("the stage is shutting down"))

    def _gather(self) -> None:
        """Wait for the decode steps of sessions still on their way (the caller holds the lock).

        A forward of 16 rows costs about what one of 2 costs (on this CPU and on a GPU), so
        waves of sessions that drift apart in the pipeline (prompts admitted in different
        forwards) are worth merging: it waits while fewer than half of the sessions that
        decoded in the last second are ready, for at most two of the last forward's time
        (capped at 0.2 s). A lone session, or a pending prefill, never waits."""
        now = time.monotonic()
        self._recent = {
            sid: (t, s) for sid, (t, s) in self._recent.items() if now - t < 1.0 and not s.closed
        }
        if any(step.tokens - step.offset > 1 for step in self._pending):
            return  # a prefill is waiting: do not delay its first token
        deadline = now + min(2.0 * self._last_batch_s, MAX_GATHER_S)
        while 2 * len(self._pending) < len(self._recent) and not self._stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def run_once(self) -> None:
        batch = self._select()
        groups: dict[tuple[int, int], list[tuple[Step, int]]] = {}
        for step, n in batch:
            key = (step.session.start_block, step.session.end_block)
            groups.setdefault(key, []).append((step, n))
        for (a, b), members in groups.items():
            self._run_group(a, b, members)

    def _select(self) -> list[tuple[Step, int]]:
        """(step, tokens to run now): every decode, then prefill chunks within the budget. One
        step per session per forward (a retry waits its turn)."""
        with self._cond:
            pending = list(self._pending)
        seen: set[str] = set()
        refused: list[Step] = []

        def runnable(step: Step, decode: bool) -> bool:
            if step.session.session_id in seen or (step.tokens - step.offset == 1) != decode:
                return False
            if step.started or self._admit(step):
                return True
            refused.append(step)
            return False

        chosen: list[tuple[Step, int]] = []
        for step in pending:
            if runnable(step, decode=True):
                chosen.append((step, 1))
                seen.add(step.session.session_id)
        budget = self.max_batch_tokens - len(chosen)
        prefills = 0
        for step in pending:
            if budget <= 0:
                break
            if not runnable(step, decode=False):
                continue
            left = step.tokens - step.offset
            n = min(left, budget)
            if self.min_rows and n < left:
                # Batch-invariant: a prompt is never split (a chunk boundary changes the
                # attention's arithmetic); a long one runs whole, alone among prefills.
                if prefills:
                    continue
                n = left
            chosen.append((step, n))
            seen.add(step.session.session_id)
            budget -= n
            prefills += 1
        self._remove(refused)
        return chosen

    def _admit(self, step: Step) -> bool:
        """Checks when the step first runs (the session's length is only final then)."""
        s = step.session
        error: TesseraError | None = None
        if s.closed:
            error = NotFound(f"unknown session {s.session_id!r} (closed or expired)")
        elif step.position > s.length:
            error = PositionAhead(
                f"step at position {step.position} but session {s.session_id!r} holds "
                f"{s.length} tokens"
            )
        elif step.position + step.tokens > s.max_length:
            error = InvalidInput(
                "x-shape",
                f"{step.position + step.tokens} tokens exceed the session's max_length "
                f"{s.max_length}",
            )
        if error is not None:
            step.done(error)
            return False
        step.started = True
        return True

    def _run_group(self, a: int, b: int, members: list[tuple[Step, int]]) -> None:
        xs = [step.x[:, step.offset : step.offset + n] for step, n in members]
        caches = [step.session.cache for step, _ in members]
        positions = [step.position + step.offset for step, _ in members]
        t0 = time.perf_counter()
        try:
            outs = self.stage.forward_batch(xs, caches, positions, a, b, self._min_rows(members))
        except Exception as exc:  # each caller gets the error; forward_batch kept the caches
            log.exception("a batched forward of %d sessions failed", len(members))
            self._finish([step for step, _ in members], exc)
            return
        elapsed = time.perf_counter() - t0
        if self.speed_factor > 1.0:  # emulate a slower device: hold it longer
            time.sleep((self.speed_factor - 1.0) * elapsed)
            elapsed *= self.speed_factor
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(members), sum(n for _, n in members), elapsed))
        self._last_batch_s = elapsed
        now = time.monotonic()
        for step, n in members:
            if n == 1:
                self._recent[step.session.session_id] = (now, step.session)
        finished: list[tuple[Step, Result]] = []
        for (step, n), out in zip(members, outs, strict=True):
            step.offset += n
            step.compute_s += elapsed
            step.outputs.append(out)
            if step.offset < step.tokens:
                continue
            step.session.last_used_s = now
            finished.append((step, (self._result(step), step.compute_s)))
        self._remove([step for step, _ in finished])
        for step, result in finished:
            step.done(result)

    def _min_rows(self, members: list[tuple[Step, int]]) -> int:
        if self.min_rows:
            return self.min_rows
        # Not for invariance, for speed: on this CPU a linear layer of 6-15 rows runs a slower
        # kernel than one of 16 (measured: 8 rows 159 ms, padded to 16 149 ms, for SmolLM2's
        # 30 blocks; 4 rows 125 ms, padded 146 ms).
        rows = sum(n for _, n in members)
        return EFFICIENT_MIN_ROWS if 6 <= rows < EFFICIENT_MIN_ROWS else 0

    def _result(self, step: Step) -> torch.Tensor | wire.StepToken:
        if step.session.end_block == self.stage.num_blocks:  # logits of the last position
            end = step.position + step.tokens
            got = sample(step.outputs[-1], step.sampling, end)
            top = [wire.TokenLogprob(token=t, logprob=lp) for t, lp in got.top]
            return wire.StepToken(
                token=got.token,
                logprob=got.logprob,
                position=end,
                top_logprobs=top if step.sampling.top_logprobs > 0 else None,
            )
        out = step.outputs
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def _finish(self, steps: list[Step], exc: BaseException) -> None:
        self._remove(steps)
        for step in steps:
            step.done(exc)

    def _remove(self, steps: list[Step]) -> None:
        """Take steps out of the queue (they are done, or failed)."""
        if not steps:
            return
        ids = {id(s) for s in steps}
        with self._cond:
            self._pending = [s for s in self._pending if id(s) not in ids]


class FutureResolver:
    """Resolves asyncio futures from the compute thread with ONE wake-up of the event loop per
    batch, however many steps finished in it (a wake-up per future costs a self-pipe write and
    a loop turn each: measurable at 32 sessions a step)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[Result], Result | BaseException]] = []

    def callback(self, future: asyncio.Future[Result]) -> Callable[[Result | BaseException], None]:
        def resolve(result: Result | BaseException) -> None:
            with self._lock:
                first = not self._ready
                self._ready.append((future, result))
            if first:
                self.loop.call_soon_threadsafe(self._apply)

        return resolve

    def _apply(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for future, result in ready:
            if future.done():  # the caller went away (cancelled): nothing to deliver
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
