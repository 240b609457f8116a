"""The discrete-event simulator: requests arrive, are routed on live state, wait for KV slots, run.

Pure: a problem, a policy, the arrivals in, per-request results out; no clock, no I/O.

Memory accounting (reference section 10.5, decided as the paper's code does): a request holds its
slots on every server of its chain from its *arrival* until its completion, so requests are served
first come first served per server and a later small request never overtakes an earlier big one.
Its wait is the largest, over the chain, of the time until that server has room (sessions leave in
order of completion); the policy may round it up (PETALS' backoff). The chain then takes the
performance model's time (prefill, then one decode step per further token) plus the policy's
fixed per-request overhead, which also holds the slots. With this accounting no server ever runs
more slots than it has (tests/unit/test_sim_engine.py checks it on every run).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tessera.placement import Plan, Problem
from tessera.placement import petals as petals_mod
from tessera.placement.paths import FloatArray, best_chain
from tessera.placement.routing import (
    RoutingTable,
    ServerLoad,
    routing_table,
    service_costs,
    wait_for_slots,
    ws_rr,
)

from .arrivals import Request
from .policies import Policy

BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 60.0


def backoff_wait(wait_s: float) -> float:
    """The first instant of PETALS' retries (after 1, 2, 4 ... <= 60 s gaps) at or after `wait_s`."""
    if wait_s <= 0 or not math.isfinite(wait_s):
        return wait_s
    t, gap = 0.0, BACKOFF_FIRST_S
    while t < wait_s:
        t += gap
        gap = min(gap * 2, BACKOFF_CAP_S)
        if gap == BACKOFF_CAP_S and t < wait_s:  # the rest is a fixed step: jump there
            steps = math.ceil((wait_s - t) / gap)
            return t + steps * gap
    return t


@dataclass(frozen=True)
class Served:
    """One request's fate. Times are absolute simulated seconds; `chain` is empty if rejected."""

    request: Request
    chain: tuple[str, ...]
    blocks: tuple[int, ...]  # blocks each hop processes (its KV slots on that server)
    start_s: float  # when the whole chain had room (after any backoff)
    first_token_s: float
    completion_s: float

    @property
    def wait_s(self) -> float:
        return self.start_s - self.request.arrival_s


class _State:
    """Live load of each routing row: free slots (may go negative: reserved by waiting requests)."""

    def __init__(self, table: RoutingTable, slots: Sequence[int]) -> None:
        self.blocks = [int(b) for b in table.graph.blocks]
        self.free = list(slots)
        # Per row, the sessions holding slots as (completion, slots), sorted by completion.
        self.active: list[list[tuple[float, int]]] = [[] for _ in slots]
        self.releases: list[tuple[float, int, int]] = []  # heap of (completion, row, slots)
        # Rows that may lack room for some request (fewer free slots than blocks): the only ones
        # whose load the routers need to see.
        self.short = {r for r, f in enumerate(self.free) if f < self.blocks[r]}

    def release_until(self, now_s: float) -> None:
        rel = self.releases
        while rel and rel[0][0] <= now_s:
            _, row, k = heapq.heappop(rel)
            del self.active[row][0]  # the row's earliest completion: this one (or an equal twin)
            self.free[row] += k
            if self.free[row] >= self.blocks[row]:
                self.short.discard(row)

    def load(self, row: int, now_s: float) -> ServerLoad:
        """The row's load as WS-RR sees it. Only the sessions that must leave before the row has
        room for its largest possible need matter to any wait, so the rest are left out."""
        free, need = self.free[row], self.blocks[row]
        sessions = []
        for completion, k in self.active[row]:
            if free >= need:
                break
            sessions.append((completion - now_s, k))
            free += k
        return ServerLoad(self.free[row], tuple(sessions))

    def has_room(self, hops: Sequence[tuple[int, int]]) -> bool:
        free = self.free
        return all(free[r] >= k for r, k in hops)

    def hold(self, row: int, k: int, completion_s: float) -> None:
        self.free[row] -= k
        bisect.insort(self.active[row], (completion_s, k))
        heapq.heappush(self.releases, (completion_s, row, k))
        if self.free[row] < self.blocks[row]:
            self.short.add(row)


def simulate(
    problem: Problem,
    policy: Policy,
    requests: Sequence[Request],
    overhead_s: float = 0.0,
) -> tuple[Served, ...]:
    """Serve `requests` (sorted by arrival) under `policy`; one result per request, in order."""
    if not policy.feasible:
        return ()
    table = routing_table(problem, Plan(policy.name, True, policy.placement))
    graph = table.graph
    state = _State(table, [policy.slots[name] for name in table.names])
    servers = problem.servers
    service: dict[tuple[int, int, int], FloatArray] = {}
    prefill_block: dict[int, FloatArray] = {}
    free_choice: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    petals_base: dict[int, FloatArray] = {}
    out: list[Served] = []
    for req in requests:
        now = req.arrival_s
        state.release_until(now)
        shape = (req.client, req.input_tokens, req.output_tokens)
        base = service.get(shape)
        if base is None:
            base = service[shape] = service_costs(table, *shape)
        # The least-cost chain with no waits stays the choice while it needs no wait itself: waits
        # only raise the other chains' costs, and ties resolve the same way. PETALS' weights
        # penalise a row short of room whatever the request needs, so there the test is stricter.
        cached = free_choice.get(shape)
        if cached is not None and (
            state.has_room(cached)
            if policy.routing == "ws-rr"
            else not any(r in state.short for r, _ in cached)
        ):
            hops, wait = cached, 0.0
        else:
            hops, wait = _route(problem, policy, table, state, req, base, now, petals_base)
            if not hops:
                out.append(Served(req, (), (), math.nan, math.nan, math.nan))
                continue
            if wait == 0.0 and cached is None and not state.short:
                free_choice[shape] = hops
        if policy.backoff:
            wait = backoff_wait(wait)
        pb = prefill_block.get(req.input_tokens)
        if pb is None:
            pb = prefill_block[req.input_tokens] = np.array(
                [servers[j].prefill_s_per_block.seconds(req.input_tokens) for j in graph.servers]
            )
        start = now + wait
        first = start + overhead_s
        svc = 0.0
        for r, k in hops:
            first += float(table.prefill_link_s[req.client, r]) + k * float(pb[r])
            svc += float(base[r, k - 1])
        completion = start + overhead_s + svc
        for r, k in hops:
            state.hold(r, k, completion)
        out.append(
            Served(
                req,
                tuple(table.names[r] for r, _ in hops),
                tuple(k for _, k in hops),
                start,
                first,
                completion,
            )
        )
    return tuple(out)


def _route(
    problem: Problem,
    policy: Policy,
    table: RoutingTable,
    state: _State,
    req: Request,
    base: FloatArray,
    now: float,
    petals_base: dict[int, FloatArray],
) -> tuple[list[tuple[int, int]], float]:
    """(hops as (row, blocks), exact wait) under the policy's routing; ([], inf) if no chain."""
    if policy.routing == "ws-rr":
        loads = {table.names[r]: state.load(r, now) for r in state.short}
        choice = ws_rr(
            table,
            req.client,
            loads,
            input_tokens=req.input_tokens,
            output_tokens=req.output_tokens,
            base_costs=base,
        )
        if choice is None or not math.isfinite(choice.wait_s):
            return [], math.inf
        return [(table.rows[n], k) for n, k in zip(choice.chain, choice.blocks, strict=True)], (
            choice.wait_s
        )
    # PETALS: its own weights, +10 s on servers whose pool looks full (the pessimistic check
    # assumes the request uses all of the server's blocks); the wait is not part of its choice.
    weights = petals_base.get(req.client)
    if weights is None:
        weights = petals_base[req.client] = petals_mod.hop_costs(problem, table.graph, req.client)
    if state.short:
        weights = weights.copy()
        weights[sorted(state.short)] += petals_mod.FULL_PENALTY_S
    _, hops = best_chain(table.graph, weights)
    if not hops:
        return [], math.inf
    wait = max(wait_for_slots(state.load(r, now), k) if r in state.short else 0.0 for r, k in hops)
    if not math.isfinite(wait):
        return [], math.inf
    return hops, wait
