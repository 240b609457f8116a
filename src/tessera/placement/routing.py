"""WS-RR: waiting-penalised shortest-path request routing (paper section 6.1), as a pure function.

Given a plan and the live load of each server (free KV slots and, for each active session, its
remaining time and the slots it holds), choose the chain of least cost
`sum over hops of (wait_j(k_j) + prefill and decode time of the hop)`, where `wait_j(k)` is how
long until server j has k free slots (0 when it has them now). The request starts when its whole
chain has room: after the largest wait on the chain. The router and the simulator both call this.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .model import Plan, Problem
from .paths import ChainGraph, FloatArray, best_chain, build_graph, linear_costs


@dataclass(frozen=True)
class ServerLoad:
    free_slots: int  # KV slots free now: a slot is one block's memory for one unit of a session
    sessions: tuple[tuple[float, int], ...] = ()  # (remaining_s, slots held) of each active session
    slots_per_block: int = 1  # slots the request being routed needs on each of its blocks here


@dataclass(frozen=True)
class RouteChoice:
    chain: tuple[str, ...]
    blocks: tuple[int, ...]  # blocks each hop processes
    wait_s: float  # until every server of the chain has room
    cost_s: float  # the WS-RR path cost (an upper bound on completion time, Corollary 2)
    service_s: float  # prefill plus decode time on the chain, no wait


@dataclass(frozen=True)
class RoutingTable:
    """The parts of WS-RR that depend only on the plan: built once, used for every request."""

    problem: Problem
    graph: ChainGraph
    names: tuple[str, ...]  # server name of each graph row
    rows: Mapping[str, int]
    prefill_link_s: FloatArray  # [client, row]
    rtt_s: FloatArray  # [client, row]
    decode_s_per_block: FloatArray  # [row]


def routing_table(problem: Problem, plan: Plan) -> RoutingTable:
    idx = {s.name: i for i, s in enumerate(problem.servers)}
    graph = build_graph(
        problem.num_blocks, [(idx[p.server], p.start, p.blocks) for p in plan.placement]
    )
    names = tuple(problem.servers[j].name for j in graph.servers)
    n_clients = len(problem.clients)
    prefill = np.array(
        [[problem.link(c, j).prefill_s for j in graph.servers] for c in range(n_clients)]
    )
    rtt = np.array([[problem.link(c, j).rtt_s for j in graph.servers] for c in range(n_clients)])
    tau = np.array([problem.servers[j].decode_s_per_block for j in graph.servers])
    return RoutingTable(
        problem, graph, names, {n: r for r, n in enumerate(names)}, prefill, rtt, tau
    )


def wait_for_slots(load: ServerLoad, need: int) -> float:
    """Seconds until `need` slots are free, as sessions finish in order of remaining time; inf if never."""
    if load.free_slots >= need:
        return 0.0
    free = load.free_slots
    for remaining_s, slots in sorted(load.sessions):
        free += slots
        if free >= need:
            return max(remaining_s, 0.0)
    return math.inf


def service_costs(
    table: RoutingTable, client: int, input_tokens: int, output_tokens: int
) -> FloatArray:
    """cost[row, k-1]: prefill plus decode time of a hop on `row` processing k blocks, no wait."""
    servers = table.problem.servers
    per_block_prefill = np.array(
        [servers[j].prefill_s_per_block.seconds(input_tokens) for j in table.graph.servers]
    )
    per_hop = table.prefill_link_s[client] + (output_tokens - 1) * table.rtt_s[client]
    per_block = per_block_prefill + (output_tokens - 1) * table.decode_s_per_block
    return linear_costs(table.graph, per_hop, per_block)


def ws_rr(
    table: RoutingTable,
    client: int,
    loads: Mapping[str, ServerLoad],
    *,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    exclude: Collection[str] = (),
    base_costs: FloatArray | None = None,
) -> RouteChoice | None:
    """The least-cost chain for one request of `client` under the current loads; None if no chain.

    `loads` may omit idle servers (they are taken to have room). `exclude` names servers that
    must not be used (marked down). `base_costs` lets a caller reuse `service_costs` across requests.
    """
    w = table.problem.workload
    l_in = w.max_input_tokens if input_tokens is None else input_tokens
    l_out = w.max_output_tokens if output_tokens is None else output_tokens
    base = service_costs(table, client, l_in, l_out) if base_costs is None else base_costs
    cost = base
    waits: dict[int, FloatArray] = {}
    blocks = table.graph.blocks
    for name, load in loads.items():
        row = table.rows.get(name)
        per = load.slots_per_block
        if row is None or load.free_slots >= blocks[row] * per:
            continue
        waits[row] = np.array(
            [wait_for_slots(load, k * per) for k in range(1, table.graph.kmax + 1)]
        )
    if waits or exclude:
        cost = base.copy()
        for row, wrow in waits.items():
            cost[row] += wrow
        for name in exclude:
            row = table.rows.get(name)
            if row is not None:
                cost[row] = math.inf
    total, hops = best_chain(table.graph, cost)
    if not hops:
        return None
    chain = tuple(table.names[r] for r, _ in hops)
    ks = tuple(k for _, k in hops)
    wait = max((float(waits[r][k - 1]) if r in waits else 0.0) for r, k in hops)
    service = float(sum(base[r, k - 1] for r, k in hops))
    return RouteChoice(chain, ks, wait, total, service)


def chain_blocks(table: RoutingTable, chain: Sequence[str]) -> tuple[int, ...]:
    """Blocks each server of a chain processes (from the previous end to its own end)."""
    out, prev = [], 0
    for name in chain:
        end = table.graph.ends[table.rows[name]]
        out.append(end - prev)
        prev = end
    return tuple(out)
