"""Live chain choice: WS-RR (`tessera.placement.routing.ws_rr`) on the workers' state.

Each server's load is its last `/state` (probed every second, see `probe.py`) corrected by the
router's own opens and closes since that probe, plus the router's own sessions with their
expected remaining time (for the waiting-time penalty). A server whose `/state` fails, or that
is not ready, is excluded until it answers again. A server whose step failed, or overran its
deadline (a suspect straggler, see `failover.py`), is excluded until a probe that started after
the mark succeeds (and for `down_s` at least): a restarted or thawed stage is used again at
once, a frozen one never. Down servers are probed more often (`DOWN_PROBE_S`). The worker stays
the authority on admission: an open that it refuses (busy) makes the caller wait or try another
chain.

Per server it also keeps the recent hop times (`stragglers.StageTimes`) and, for the whole
router, the stage work done and the hedging budget (`stragglers.HedgeBudget`).

`replace` swaps the plan for new requests (see `reload.py`). Requests already running keep their
chain: a server that left the plan stays reachable by name (`_retired`) until its last session
of ours closes, then its client is closed on the next poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from tessera.api.stage import StageState, pages_for
from tessera.errors import TesseraError
from tessera.placement import Plan, Problem
from tessera.placement.routing import RouteChoice, RoutingTable, ServerLoad, routing_table, ws_rr

from .stage_client import ProbeTarget, StageClient, StageFailed
from .stragglers import HedgeBudget, StageTimes, StragglerPolicy

DOWN_PROBE_S = 0.25  # how often a down server is probed (a restart is seen within this)


log = logging.getLogger("tessera.router")


@dataclass(frozen=True)
class Hop:
    server: str
    start_block: int
    end_block: int


@dataclass
class _Server:
    client: StageClient | None  # None: the plan names it but no endpoint is configured
    state: StageState | None = None
    up: bool = False
    down_until_s: float = 0.0  # monotonic: not routed to before this (a failed step)
    marked_s: float = -1.0  # monotonic: when last marked down; only a later probe clears it
    delta_slots: int = 0  # our opens minus closes since the last poll
    own: dict[str, tuple[float, int]] = dataclasses.field(
        default_factory=dict
    )  # sid -> (end, slots)


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
    ) -> None:
        self.problem = problem
        self.plan = plan
        self.client_index = client_index
        self.table: RoutingTable = routing_table(problem, plan)
        self.ends = {p.server: p.end for p in plan.placement}
        self.servers = {p.server: _Server(clients.get(p.server)) for p in plan.placement}
        self._changed = asyncio.Event()  # replaced on each notify: no missed or stale wake-ups
        self._measured = False
        self.down_s = down_s
        self.waiting = 0  # requests queued for room (see `generate.reserve`)
        self._retired: list[tuple[str, _Server]] = []  # left the plan; still used by requests
        self.straggler_policy = straggler_policy or StragglerPolicy()
        self._times: dict[str, StageTimes] = {}
        self.budget = HedgeBudget()
        # Metrics hooks: (reason, winner, extra block-tokens) of each hedge; block-tokens of work.
        self.on_hedge: Callable[[str, str, float], None] | None = None
        self.on_work: Callable[[float], None] | None = None
        self.probe_targets: tuple[ProbeTarget, ...] = self._targets()

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
        servers: dict[str, _Server] = {}
        for p in plan.placement:
            prev = self.servers.get(p.server)
            client = clients.get(p.server)
            keep = prev is not None and prev.client is client
            servers[p.server] = prev if keep and prev is not None else _Server(client)
        fresh = [(n, s) for n, s in servers.items() if s is not self.servers.get(n)]
        await asyncio.gather(*(self._poll(n, s) for n, s in fresh))
        for name, s in self.servers.items():
            if servers.get(name) is not s:
                self._retired.append((name, s))
        # No await between these: a request sees the old plan or the new one, never a mix.
        self.problem, self.plan, self.table = problem, plan, table
        self.client_index = client_index
        self.ends = {p.server: p.end for p in plan.placement}
        self.servers = servers
        self._measured = False
        self.probe_targets = self._targets()
        self.notify()

    def _targets(self) -> tuple[ProbeTarget, ...]:
        return tuple(s.client.probe_target() for s in self.servers.values() if s.client)

    def _find(self, server: str) -> _Server | None:
        """The server by name: in the plan, else the latest retired one (running requests)."""
        s = self.servers.get(server)
        if s is not None:
            return s
        for name, r in reversed(self._retired):
            if name == server:
                return r
        return None

    async def _close_idle_retired(self) -> None:
        """Close the clients of retired servers that no request of ours uses any more."""
        in_use = {id(s.client) for s in self.servers.values()}
        idle = [(n, r) for n, r in self._retired if not r.own]
        self._retired = [(n, r) for n, r in self._retired if r.own]
        for name, r in idle:
            if r.client is not None and id(r.client) not in in_use:
                log.info("closing the client of stage %s (no longer in the plan)", name)
                await r.client.aclose()

    def stage_clients(self) -> list[StageClient]:
        """Every client still held (in the plan or retired): to close at shutdown."""
        all_servers = [*self.servers.values(), *(r for _, r in self._retired)]
        out: dict[int, StageClient] = {id(s.client): s.client for s in all_servers if s.client}
        return list(out.values())

    # --- live state -------------------------------------------------------------------------
    async def _poll(self, name: str, s: _Server) -> None:
        if s.client is None:
            return
        started_s = time.monotonic()
        try:
            state: StageState | TesseraError = await s.client.state()
        except TesseraError as exc:  # unreachable, refused (401) or a bad answer: down
            state = exc
        self._apply(name, s, started_s, state)

    def apply_probe(
        self, name: str, base_url: str, started_s: float, state: StageState | TesseraError
    ) -> None:
        """A probe's answer (from the probe thread, on the event loop): the server's state, or
        why it is down. Ignored if the server has changed since (a plan reload)."""
        s = self.servers.get(name)
        if s is None or s.client is None or s.client.base_url != base_url:
            return
        self._apply(name, s, started_s, state)
        self._use_measured_speeds()
        self.notify()

    def _apply(
        self, name: str, s: _Server, started_s: float, state: StageState | TesseraError
    ) -> None:
        if isinstance(state, TesseraError):
            if s.up:
                log.warning("stage %s is down: %s", name, state)
            s.up = False
            return
        cleared = started_s >= s.marked_s and time.monotonic() >= s.down_until_s
        up = state.ready and cleared
        if up and not s.up:
            log.info("stage %s is up (%d free slots)", name, state.free_slots)
        s.state, s.up, s.delta_slots = state, up, 0

    def is_up(self, name: str) -> bool:
        s = self.servers.get(name)
        return s is not None and s.up

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(n, s) for n, s in self.servers.items()))
        await self._close_idle_retired()
        self._use_measured_speeds()
        self.notify()

    async def poll_forever(self, interval_s: float = 1.0) -> None:
        """Probe on the event loop (in-process stages in tests; `probe.py` otherwise)."""
        while True:
            await asyncio.sleep(min(interval_s, DOWN_PROBE_S) if self._down() else interval_s)
            await self.poll_once()

    async def housekeep_forever(self, interval_s: float = 1.0) -> None:
        """Close the clients of retired servers (the probe thread probes the others)."""
        while True:
            await asyncio.sleep(interval_s)
            await self._close_idle_retired()

    def mark_down(self, server: str, why: str = "a step failed") -> None:
        """Stop routing to `server` until a probe started from now on succeeds (and for
        `down_s` at least)."""
        s = self.servers.get(server)
        if s is not None:
            if s.up:
                log.warning("stage %s marked down (%s) until a probe succeeds", server, why)
            s.up = False
            s.marked_s = time.monotonic()
            s.down_until_s = s.marked_s + self.down_s
            self.notify()

    def suspect(self, server: str) -> None:
        """A step on `server` overran its deadline: new requests avoid it until a probe
        succeeds (a frozen stage answers no probe; a merely busy one does, at once)."""
        self.mark_down(server, "a step overran its deadline")

    # --- stragglers -------------------------------------------------------------------------
    def times(self, server: str) -> StageTimes:
        t = self._times.get(server)
        if t is None:
            t = self._times[server] = StageTimes()
        return t

    @property
    def num_blocks(self) -> int:
        return self.problem.num_blocks

    def count_work(self, block_tokens: float) -> None:
        self.budget.add_work(block_tokens)
        if self.on_work is not None:
            self.on_work(block_tokens)

    def hedged(self, reason: str, winner: str, extra_block_tokens: float) -> None:
        """A hedge ended: `winner` is primary, hedge or none; the loser's work was extra."""
        self.budget.add_extra(extra_block_tokens)
        if self.on_hedge is not None:
            self.on_hedge(reason, winner, extra_block_tokens)

    def up_servers(self) -> list[str]:
        return [n for n, s in self.servers.items() if s.up]

    def _use_measured_speeds(self) -> None:
        """Once every server has measured its step time, route with measured times, not the plan's."""
        if self._measured or not all(s.state and s.state.ready for s in self.servers.values()):
            return
        measured = {n: s.state.decode_s_per_block for n, s in self.servers.items() if s.state}
        servers = tuple(
            dataclasses.replace(sv, decode_s_per_block=measured[sv.name])
            if measured.get(sv.name, 0.0) > 0
            else sv
            for sv in self.problem.servers
        )
        self.problem = dataclasses.replace(self.problem, servers=servers)
        self.table = routing_table(self.problem, self.plan)
        self._measured = True

    def loads(self, now_s: float, tokens: int = 0) -> dict[str, ServerLoad]:
        """Each server's load in its own KV slots (pages of `page_tokens` tokens of one block),
        with what a request of `tokens` tokens (prompt plus max_tokens) needs per block."""
        out: dict[str, ServerLoad] = {}
        for name, s in self.servers.items():
            if s.state is None:
                continue
            own_held = sum(slots for _, slots in s.own.values())
            free = min(s.state.free_slots - s.delta_slots, s.state.total_slots - own_held)
            sessions = tuple((max(end - now_s, 0.0), slots) for end, slots in s.own.values())
            per = pages_for(tokens, s.state.page_tokens) if tokens > 0 else 1
            out[name] = ServerLoad(free_slots=max(free, 0), sessions=sessions, slots_per_block=per)
        return out

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout_s: float) -> None:
        """Until room may have appeared (a session closed, a poll came back) or the timeout."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            pass  # a timeout is an expected outcome: the caller re-checks and maybe gives up

    # --- choice and accounting ----------------------------------------------------------------
    def choose(
        self, input_tokens: int, output_tokens: int, *, avoid: Collection[str] = ()
    ) -> RouteChoice | None:
        """The best chain of servers that are up and not in `avoid`, under the live load."""
        return ws_rr(
            self.table,
            self.client_index,
            self.loads(time.monotonic(), input_tokens + output_tokens),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            exclude=self._down() | set(avoid),
        )

    def choose_unloaded(
        self, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> RouteChoice | None:
        """The best chain of servers that are up, as if they were idle (None: no chain)."""
        return ws_rr(
            self.table,
            self.client_index,
            {},
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            exclude=self._down(),
        )

    def has_complete_chain(self) -> bool:
        return self.choose_unloaded() is not None

    def running_remaining_s(self, now_s: float) -> list[float]:
        """Expected remaining time of each request of ours (one entry per session id)."""
        ends: dict[str, float] = {}
        for server in self.servers.values():
            for sid, (end_s, _slots) in server.own.items():
                ends[sid] = max(ends.get(sid, end_s), end_s)
        return [end_s - now_s for end_s in ends.values()]

    def _down(self) -> set[str]:
        return {n for n, s in self.servers.items() if not s.up}

    def hops(self, chain: tuple[str, ...]) -> list[Hop]:
        out, prev = [], 0
        for name in chain:
            end = self.ends[name]
            out.append(Hop(name, prev, end))
            prev = end
        return out

    def client(self, server: str) -> StageClient:
        s = self._find(server)
        if s is None:  # left the plan and no session of ours is left on it: fail over
            raise StageFailed(server, "no longer in the plan")
        if s.client is None:
            raise StageFailed(server, "no endpoint configured")
        return s.client

    def opened(self, server: str, session_id: str, slots: int, expected_end_s: float) -> None:
        s = self._find(server)
        if s is not None:
            s.own[session_id] = (expected_end_s, slots)
            s.delta_slots += slots

    def closed(self, server: str, session_id: str) -> None:
        holders = [self.servers.get(server), *(r for n, r in self._retired if n == server)]
        for s in holders:
            held = s.own.pop(session_id, None) if s is not None else None
            if s is not None and held is not None:
                s.delta_slots -= held[1]
                self.notify()

    def refused(self, server: str) -> None:
        """The worker said busy: trust that over our estimate until the next poll."""
        s = self._find(server)
        if s is not None and s.state is not None:
            s.delta_slots = s.state.free_slots
