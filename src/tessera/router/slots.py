"""The slot book: the KV slots this router holds on each stage, between two polls of its state.

A stage's `/state` is at most a poll old; the book corrects it with the router's own opens and
closes since that poll (`delta_slots`), and remembers each session of ours with its expected
end (for WS-RR's waiting-time penalty and the Retry-After estimate). Entries are keyed by the
directory's `StageKey` (a server name and which client of it): after a plan reload a retired
stage and its successor of the same name keep separate books. `RoomSignal` wakes whoever waits
for room (the admission queue, a failover) when a session closes or a poll comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from tessera.api.stage import StageState, pages_for
from tessera.placement.routing import ServerLoad


@dataclass(frozen=True)
class StageKey:
    name: str
    serial: int  # one per directory entry: a retired stage and its successor differ


class RoomSignal:
    """Room may have appeared (a session closed, a poll came back): wakes every waiter."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()  # replaced on each notify: no missed or stale wake-ups

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        """Until the next notify or the timeout."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            pass  # a timeout is an expected outcome: the caller re-checks and maybe gives up


@dataclass
class _Ledger:
    delta_slots: int = 0  # our opens minus closes since the last poll
    own: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)  # sid: end, slots


class SlotBook:
    def __init__(self, signal: RoomSignal) -> None:
        self._signal = signal
        self._ledgers: dict[StageKey, _Ledger] = {}

    def _ledger(self, key: StageKey) -> _Ledger:
        ledger = self._ledgers.get(key)
        if ledger is None:
            ledger = self._ledgers[key] = _Ledger()
        return ledger

    def opened(self, key: StageKey, session_id: str, slots: int, expected_end_s: float) -> None:
        ledger = self._ledger(key)
        ledger.own[session_id] = (expected_end_s, slots)
        ledger.delta_slots += slots

    def closed(self, server: str, session_id: str) -> None:
        """A session closed on every stage of that name (in the plan or retired) that held it."""
        for key, ledger in self._ledgers.items():
            held = ledger.own.pop(session_id, None) if key.name == server else None
            if held is not None:
                ledger.delta_slots -= held[1]
                self._signal.notify()

    def refused(self, key: StageKey, free_slots: int) -> None:
        """The worker said busy: count all its free slots as taken until the next poll."""
        self._ledger(key).delta_slots = free_slots

    def rebase(self, key: StageKey) -> None:
        """A fresh state of the stage arrived: it counts our sessions already."""
        ledger = self._ledgers.get(key)
        if ledger is not None:
            ledger.delta_slots = 0

    def holds(self, key: StageKey) -> bool:
        """Whether a session of ours is open on this stage."""
        ledger = self._ledgers.get(key)
        return ledger is not None and bool(ledger.own)

    def forget(self, key: StageKey) -> None:
        self._ledgers.pop(key, None)

    def loads(
        self, stages: Iterable[tuple[StageKey, StageState]], now_s: float, tokens: int = 0
    ) -> dict[str, ServerLoad]:
        """Each stage's load in its own KV slots (pages of `page_tokens` tokens of one block),
        with what a request of `tokens` tokens (prompt plus max_tokens) needs per block."""
        out: dict[str, ServerLoad] = {}
        for key, state in stages:
            ledger = self._ledgers.get(key) or _Ledger()
            own_held = sum(slots for _, slots in ledger.own.values())
            free = min(state.free_slots - ledger.delta_slots, state.total_slots - own_held)
            sessions = tuple((max(end - now_s, 0.0), slots) for end, slots in ledger.own.values())
            per = pages_for(tokens, state.page_tokens) if tokens > 0 else 1
            out[key.name] = ServerLoad(
                free_slots=max(free, 0), sessions=sessions, slots_per_block=per
            )
        return out

    def running_remaining_s(self, keys: Iterable[StageKey], now_s: float) -> list[float]:
        """Expected remaining time of each request of ours on these stages (one per session)."""
        ends: dict[str, float] = {}
        for key in keys:
            ledger = self._ledgers.get(key)
            for sid, (end_s, _slots) in ledger.own.items() if ledger else ():
                ends[sid] = max(ends.get(sid, end_s), end_s)
        return [end_s - now_s for end_s in ends.values()]
