"""The stage directory: the plan, each stage's client, its last `/state` and whether it is up.

A server whose `/state` fails, or that is not ready, is down until it answers again. A server
whose step failed, or overran its deadline (a suspect straggler, see `failover.py`), is down
until a probe that started after the mark succeeds (and for `down_s` at least): a restarted or
thawed stage is used again at once, a frozen one never. Down servers are probed more often
(`DOWN_PROBE_S`). Once every stage has measured its step time, routing uses the measured times,
not the plan's.

`replace` swaps the plan for new requests (see `reload.py`). Requests already running keep their
chain: a server that left the plan stays reachable by name (retired) until the slot book says
no session of ours is left on it, then its client is closed on the next poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.api.stage import StageState
from tessera.errors import TesseraError
from tessera.placement import Plan, Problem
from tessera.placement.routing import RoutingTable, routing_table

from .slots import RoomSignal, SlotBook, StageKey
from .stage_client import ProbeTarget, StageClient, StageFailed

DOWN_PROBE_S = 0.25  # how often a down server is probed (a restart is seen within this)

log = logging.getLogger("tessera.router")


@dataclass(frozen=True)
class Hop:
    server: str
    start_block: int
    end_block: int


@dataclass
class _Stage:
    key: StageKey
    client: StageClient | None  # None: the plan names it but no endpoint is configured
    state: StageState | None = None
    up: bool = False
    down_until_s: float = 0.0  # monotonic: not routed to before this (a failed step)
    marked_s: float = -1.0  # monotonic: when last marked down; only a later probe clears it


class StageDirectory:
    def __init__(
        self,
        problem: Problem,
        plan: Plan,
        clients: Mapping[str, StageClient],
        *,
        slots: SlotBook,
        signal: RoomSignal,
        client_index: int = 0,
        down_s: float = 0.0,
    ) -> None:
        self._slots = slots
        self._signal = signal
        self._serials = itertools.count()
        self._down_s = down_s
        self._problem = problem
        self._plan = plan
        self._client_index = client_index
        self._table: RoutingTable = routing_table(problem, plan)
        self._ends = {p.server: p.end for p in plan.placement}
        self._stages = {
            p.server: self._new(p.server, clients.get(p.server)) for p in plan.placement
        }
        self._retired: list[_Stage] = []  # left the plan; still used by requests
        self._measured = False
        self._targets = self._probe_targets()

    def _new(self, name: str, client: StageClient | None) -> _Stage:
        return _Stage(StageKey(name, next(self._serials)), client)

    # --- what routing reads -------------------------------------------------------------------
    @property
    def problem(self) -> Problem:
        return self._problem

    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def table(self) -> RoutingTable:
        return self._table

    @property
    def client_index(self) -> int:
        return self._client_index

    @property
    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return self._targets

    def live_states(self) -> list[tuple[StageKey, StageState]]:
        """The last state of every stage in the plan that has answered once."""
        return [(s.key, s.state) for s in self._stages.values() if s.state is not None]

    def keys(self) -> list[StageKey]:
        """The stages of the plan (not the retired ones)."""
        return [s.key for s in self._stages.values()]

    def down(self) -> set[str]:
        return {n for n, s in self._stages.items() if not s.up}

    def is_up(self, name: str) -> bool:
        s = self._stages.get(name)
        return s is not None and s.up

    def up_servers(self) -> list[str]:
        return [n for n, s in self._stages.items() if s.up]

    def hops(self, chain: tuple[str, ...]) -> list[Hop]:
        out, prev = [], 0
        for name in chain:
            end = self._ends[name]
            out.append(Hop(name, prev, end))
            prev = end
        return out

    def _find(self, server: str) -> _Stage | None:
        """The server by name: in the plan, else the latest retired one (running requests)."""
        s = self._stages.get(server)
        if s is not None:
            return s
        for r in reversed(self._retired):
            if r.key.name == server:
                return r
        return None

    def key_of(self, server: str) -> StageKey | None:
        s = self._find(server)
        return s.key if s is not None else None

    def state_of(self, server: str) -> StageState | None:
        s = self._find(server)
        return s.state if s is not None else None

    def client(self, server: str) -> StageClient:
        s = self._find(server)
        if s is None:  # left the plan and no session of ours is left on it: fail over
            raise StageFailed(server, "no longer in the plan")
        if s.client is None:
            raise StageFailed(server, "no endpoint configured")
        return s.client

    def stage_clients(self) -> list[StageClient]:
        """Every client still held (in the plan or retired): to close at shutdown."""
        held = [*self._stages.values(), *self._retired]
        out: dict[int, StageClient] = {id(s.client): s.client for s in held if s.client}
        return list(out.values())

    # --- a new plan ---------------------------------------------------------------------------
    async def replace(
        self,
        problem: Problem,
        plan: Plan,
        clients: Mapping[str, StageClient],
        *,
        client_index: int = 0,
    ) -> None:
        """Route new requests by another plan. A server whose client is the same object keeps
        its live state (load, down mark, our sessions); the others are retired. New servers are
        polled before the switch, so that new requests do not find them all down. Raises (and
        changes nothing) if the plan cannot be routed."""
        table = routing_table(problem, plan)  # first: an error leaves the old plan in place
        stages: dict[str, _Stage] = {}
        for p in plan.placement:
            prev = self._stages.get(p.server)
            client = clients.get(p.server)
            keep = prev is not None and prev.client is client
            stages[p.server] = prev if keep and prev is not None else self._new(p.server, client)
        fresh = [s for n, s in stages.items() if s is not self._stages.get(n)]
        await asyncio.gather(*(self._poll(s) for s in fresh))
        for name, s in self._stages.items():
            if stages.get(name) is not s:
                self._retired.append(s)
        # No await between these: a request sees the old plan or the new one, never a mix.
        self._problem, self._plan, self._table = problem, plan, table
        self._client_index = client_index
        self._ends = {p.server: p.end for p in plan.placement}
        self._stages = stages
        self._measured = False
        self._targets = self._probe_targets()
        self._signal.notify()

    def _probe_targets(self) -> tuple[ProbeTarget, ...]:
        return tuple(s.client.probe_target() for s in self._stages.values() if s.client)

    async def _close_idle_retired(self) -> None:
        """Close the clients of retired servers that no request of ours uses any more."""
        in_use = {id(s.client) for s in self._stages.values()}
        idle = [r for r in self._retired if not self._slots.holds(r.key)]
        self._retired = [r for r in self._retired if self._slots.holds(r.key)]
        for r in idle:
            self._slots.forget(r.key)
            if r.client is not None and id(r.client) not in in_use:
                log.info("closing the client of stage %s (no longer in the plan)", r.key.name)
                await r.client.aclose()

    # --- live state ---------------------------------------------------------------------------
    async def _poll(self, s: _Stage) -> None:
        if s.client is None:
            return
        started_s = time.monotonic()
        try:
            state: StageState | TesseraError = await s.client.state()
        except TesseraError as exc:  # unreachable, refused (401) or a bad answer: down
            state = exc
        self._apply(s, started_s, state)

    def apply_probe(
        self, name: str, base_url: str, started_s: float, state: StageState | TesseraError
    ) -> None:
        """A probe's answer (from the probe thread, on the event loop): the server's state, or
        why it is down. Ignored if the server has changed since (a plan reload)."""
        s = self._stages.get(name)
        if s is None or s.client is None or s.client.base_url != base_url:
            return
        self._apply(s, started_s, state)
        self._use_measured_speeds()
        self._signal.notify()

    def _apply(self, s: _Stage, started_s: float, state: StageState | TesseraError) -> None:
        if isinstance(state, TesseraError):
            if s.up:
                log.warning("stage %s is down: %s", s.key.name, state)
            s.up = False
            return
        cleared = started_s >= s.marked_s and time.monotonic() >= s.down_until_s
        up = state.ready and cleared
        if up and not s.up:
            log.info("stage %s is up (%d free slots)", s.key.name, state.free_slots)
        s.state, s.up = state, up
        self._slots.rebase(s.key)

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(s) for s in self._stages.values()))
        await self._close_idle_retired()
        self._use_measured_speeds()
        self._signal.notify()

    async def poll_forever(self, interval_s: float = 1.0) -> None:
        """Probe on the event loop (in-process stages in tests; `probe.py` otherwise)."""
        while True:
            await asyncio.sleep(min(interval_s, DOWN_PROBE_S) if self.down() else interval_s)
            await self.poll_once()

    async def housekeep_forever(self, interval_s: float = 1.0) -> None:
        """Close the clients of retired servers (the probe thread probes the others)."""
        while True:
            await asyncio.sleep(interval_s)
            await self._close_idle_retired()

    def mark_down(self, server: str, why: str = "a step failed") -> None:
        """Stop routing to `server` until a probe started from now on succeeds (and for
        `down_s` at least)."""
        s = self._stages.get(server)
        if s is not None:
            if s.up:
                log.warning("stage %s marked down (%s) until a probe succeeds", server, why)
            s.up = False
            s.marked_s = time.monotonic()
            s.down_until_s = s.marked_s + self._down_s
            self._signal.notify()

    def suspect(self, server: str) -> None:
        """A step on `server` overran its deadline: new requests avoid it until a probe
        succeeds (a frozen stage answers no probe; a merely busy one does, at once)."""
        self.mark_down(server, "a step overran its deadline")

    def _use_measured_speeds(self) -> None:
        """Once every server has measured its step time, route with measured times, not the plan's."""
        stages = self._stages.values()
        if self._measured or not all(s.state and s.state.ready for s in stages):
            return
        measured = {n: s.state.decode_s_per_block for n, s in self._stages.items() if s.state}
        servers = tuple(
            dataclasses.replace(sv, decode_s_per_block=measured[sv.name])
            if measured.get(sv.name, 0.0) > 0
            else sv
            for sv in self._problem.servers
        )
        self._problem = dataclasses.replace(self._problem, servers=servers)
        self._table = routing_table(self._problem, self._plan)
        self._measured = True
