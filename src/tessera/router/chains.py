"""Live chain choice: WS-RR (`tessera.placement.routing.ws_rr`) on the workers' state.

`LiveChains` puts together what the choice reads, each part owning its state:
- `StageDirectory` (`directory.py`): the plan, each stage's client, last `/state` and down mark,
  polling and plan reloads;
- `SlotBook` (`slots.py`): the slots our sessions hold since the last poll, and their ends;
- `StragglerBook` (`stragglers.py`): recent hop times per stage and the hedging budget.
A server's load is its last `/state` corrected by the slot book; a server that is down is
excluded. The worker stays the authority on admission: an open that it refuses (busy) makes
the caller wait or try another chain (`admission.py` queues requests for room).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from tessera.api.stage import StageState
from tessera.errors import TesseraError
from tessera.placement import Plan, Problem
from tessera.placement.routing import RouteChoice, ws_rr

from .directory import DOWN_PROBE_S, Hop, StageDirectory
from .slots import RoomSignal, SlotBook
from .stage_client import ProbeTarget, StageClient
from .stragglers import StageTimes, StragglerBook, StragglerPolicy

__all__ = ["DOWN_PROBE_S", "Hop", "LiveChains", "ProbeTarget"]


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

    # --- the directory (what the probe thread, the reloader and the app use) ---------------------
    @property
    def plan(self) -> Plan:
        return self.directory.plan

    @property
    def num_blocks(self) -> int:
        return self.directory.problem.num_blocks

    @property
    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return self.directory.probe_targets

    async def replace(
        self,
        problem: Problem,
        plan: Plan,
        clients: Mapping[str, StageClient],
        *,
        client_index: int = 0,
    ) -> None:
        await self.directory.replace(problem, plan, clients, client_index=client_index)

    def apply_probe(
        self, name: str, base_url: str, started_s: float, state: StageState | TesseraError
    ) -> None:
        self.directory.apply_probe(name, base_url, started_s, state)

    async def poll_once(self) -> None:
        await self.directory.poll_once()

    async def poll_forever(self, interval_s: float = 1.0) -> None:
        await self.directory.poll_forever(interval_s)

    async def housekeep_forever(self, interval_s: float = 1.0) -> None:
        await self.directory.housekeep_forever(interval_s)

    def is_up(self, name: str) -> bool:
        return self.directory.is_up(name)

    def up_servers(self) -> list[str]:
        return self.directory.up_servers()

    def mark_down(self, server: str, why: str = "a step failed") -> None:
        self.directory.mark_down(server, why)

    def suspect(self, server: str) -> None:
        """A step on `server` overran its deadline: new requests avoid it until a probe
        succeeds (a frozen stage answers no probe; a merely busy one does, at once)."""
        self.directory.mark_down(server, "a step overran its deadline")

    def client(self, server: str) -> StageClient:
        return self.directory.client(server)

    def hops(self, chain: tuple[str, ...]) -> list[Hop]:
        return self.directory.hops(chain)

    def stage_clients(self) -> list[StageClient]:
        return self.directory.stage_clients()

    # --- stragglers (what a chain run records) ---------------------------------------------------
    @property
    def straggler_policy(self) -> StragglerPolicy:
        return self.stragglers.policy

    def times(self, server: str) -> StageTimes:
        return self.stragglers.times(server)

    def count_work(self, block_tokens: float) -> None:
        self.stragglers.count_work(block_tokens)

    def hedged(self, reason: str, winner: str, extra_block_tokens: float) -> None:
        self.stragglers.hedged(reason, winner, extra_block_tokens)

    # --- slots (a chain run's opens and closes) ---------------------------------------------------
    def opened(self, server: str, session_id: str, slots: int, expected_end_s: float) -> None:
        key = self.directory.key_of(server)
        if key is not None:
            self.slots.opened(key, session_id, slots, expected_end_s)

    def closed(self, server: str, session_id: str) -> None:
        self.slots.closed(server, session_id)

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
