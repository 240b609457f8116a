"""Live chain choice: WS-RR (`tessera.placement.routing.ws_rr`) on the workers' state.

`LiveChains` puts together what the choice reads, each part owning its state:
- `StageDirectory` (`directory.py`): the plan, each stage's client, last `/state` and down mark,
  polling and plan reloads;
- `SlotBook` (`slots.py`): the slots our sessions hold since the last poll, and their ends;
- `StragglerBook` (`stragglers.py`): recent hop times per stage and the hedging budget.
A server's load is its last `/state` corrected by the slot book; a server that is down is
excluded. Callers reach each part for its own concern (`chains.directory.client(...)`,
`chains.stragglers.times(...)`); `LiveChains` holds only what needs more than one part. The worker stays the authority on admission: an open that it refuses (busy) makes
the caller wait or try another chain (`admission.py` queues requests for room).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from tessera.placement import Plan, Problem
from tessera.placement.routing import RouteChoice, ws_rr

from .directory import StageDirectory
from .slots import RoomSignal, SlotBook
from .stage_client import StageClient
from .stragglers import StragglerBook, StragglerPolicy

__all__ = ["LiveChains"]


class LiveChains:
    def __init__(
        self,
        problem: Problem,
        plan: Plan,
        clients: Mapping[str, StageClient],
        *,
        client_index: int = 0,
        down_s: float = 0.0,
        straggler_policy: StragglerPolicy | None = None,
        on_hedge: Callable[[str, str, float], None] | None = None,
        on_work: Callable[[float], None] | None = None,
    ) -> None:
        self._signal = RoomSignal()
        self.slots = SlotBook(self._signal)
        self.directory = StageDirectory(
            problem,
            plan,
            clients,
            slots=self.slots,
            signal=self._signal,
            client_index=client_index,
            down_s=down_s,
        )
        self.stragglers = StragglerBook(
            straggler_policy or StragglerPolicy(), on_hedge=on_hedge, on_work=on_work
        )

    # --- slots (a chain run's opens and closes) ---------------------------------------------------
    def opened(self, server: str, session_id: str, slots: int, expected_end_s: float) -> None:
        key = self.directory.key_of(server)
        if key is not None:
            self.slots.opened(key, session_id, slots, expected_end_s)

    def refused(self, server: str) -> None:
        """The worker said busy: trust that over our estimate until the next poll."""
        key, state = self.directory.key_of(server), self.directory.state_of(server)
        if key is not None and state is not None:
            self.slots.refused(key, state.free_slots)

    async def wait_change(self, timeout_s: float) -> None:
        """Until room may have appeared (a session closed, a poll came back) or the timeout."""
        await self._signal.wait(timeout_s)

    def running_remaining_s(self, now_s: float) -> list[float]:
        """Expected remaining time of each request of ours (one entry per session id)."""
        return self.slots.running_remaining_s(self.directory.keys(), now_s)

    # --- choice -----------------------------------------------------------------------------------
    def choose(
        self, input_tokens: int, output_tokens: int, *, avoid: Collection[str] = ()
    ) -> RouteChoice | None:
        """The best chain of servers that are up and not in `avoid`, under the live load."""
        d = self.directory
        loads = self.slots.loads(d.live_states(), time.monotonic(), input_tokens + output_tokens)
        return ws_rr(
            d.table,
            d.client_index,
            loads,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            exclude=d.down() | set(avoid),
        )

    def choose_unloaded(
        self, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> RouteChoice | None:
        """The best chain of servers that are up, as if they were idle (None: no chain)."""
        d = self.directory
        return ws_rr(
            d.table,
            d.client_index,
            {},
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            exclude=d.down(),
        )

    def has_complete_chain(self) -> bool:
        return self.choose_unloaded() is not None
