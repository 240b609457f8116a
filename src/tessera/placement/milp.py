"""The exact BPRR MILP (paper section 3.2, (13a)-(13f) with the linearisation (9)-(12)), on pulp + CBC.

The only module that imports pulp (and its CBC binary package, cbcbox), and only when it solves. Requests of one client are interchangeable, and a plan gives
one chain per client (placement-contract.md), so flows are indexed by client and weighted by its
number of requests n_c: this is the paper's MILP with the constraint that a client's requests
share a chain, and it is identical to it when every client sends one request.
Blocks are 1-based inside the model (a_c = 0, m_c = 1 for the source; a = L+1 for the sink) as in
the paper, and m_j may be 0 (a server left empty: Lemma 1 then forbids any flow through it).
Always solved with a time limit; warm-started from CG-BPRR; `proven_optimal` comes from both
pulp's `status` and `sol_status`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from . import cg_bprr
from .model import Placement, Plan, Problem
from .perf import chain_hops, predicted_for, requests_per_client

SOLVER = "milp"


@dataclass(frozen=True)
class MilpResult:
    plan: Plan
    proven_optimal: bool
    status: str
    sol_status: str


def _edges(n_servers: int) -> list[tuple[str | int, str | int]]:
    """Logical links of one client: S -> j, i -> j (i != j), j -> D."""
    out: list[tuple[str | int, str | int]] = [("S", j) for j in range(n_servers)]
    out += [(i, j) for i in range(n_servers) for j in range(n_servers) if i != j]
    out += [(j, "D") for j in range(n_servers)]
    return out


def solve(problem: Problem, concurrent_requests: int, time_limit_s: float) -> MilpResult:
    if time_limit_s <= 0:
        raise ValueError("time_limit_s must be positive")
    import pulp  # here, not at the top: the router and the operator import placement, never a solver

    n, big_l = len(problem.servers), problem.num_blocks
    s_c = problem.session_bytes_per_block
    units = [
        (c, n_c)
        for c, n_c in enumerate(requests_per_client(problem, concurrent_requests))
        if n_c > 0
    ]
    edges = _edges(n)

    prob = pulp.LpProblem("bprr", pulp.LpMinimize)
    a = [prob.add_variable(f"a_{j}", 1, big_l, cat="Integer") for j in range(n)]
    m = [prob.add_variable(f"m_{j}", 0, big_l, cat="Integer") for j in range(n)]
    f: dict[tuple[int, Any, Any], Any] = {}
    n_blocks: dict[tuple[int, Any, Any], Any] = {}
    lin: dict[tuple[int, Any, Any], tuple[Any, Any, Any, Any]] = {}
    objective = []
    for u, (c, n_c) in enumerate(units):
        for i, j in edges:
            key = (u, i, j)
            fv = prob.add_variable(f"f_{u}_{i}_{j}", cat="Binary")
            al = prob.add_variable(f"al_{u}_{i}_{j}", 0, big_l + 1)
            be = prob.add_variable(f"be_{u}_{i}_{j}", 0, big_l)
            ga = prob.add_variable(f"ga_{u}_{i}_{j}", 0, big_l)
            de = prob.add_variable(f"de_{u}_{i}_{j}", 0, big_l)
            # (9) alpha = a_j f   (sink: (L+1) f)
            if j == "D":
                prob += al == (big_l + 1) * fv
                prob += ga == fv  # (11) sink: m = 1
            elif isinstance(j, int):
                prob += al <= (big_l + 1) * fv
                prob += al <= a[j]
                prob += al >= a[j] - (big_l + 1) * (1 - fv)
                prob += ga <= big_l * fv
                prob += ga <= m[j]
                prob += ga >= m[j] - big_l * (1 - fv)
            if i == "S":
                prob += be == 0  # (10) source: a = 0
                prob += de == fv  # (12) source: m = 1
                prob += al <= 1  # (13e) the first server holds block 1
            elif isinstance(i, int):
                prob += be <= big_l * fv
                prob += be <= a[i]
                prob += be >= a[i] - big_l * (1 - fv)
                prob += de <= big_l * fv
                prob += de <= m[i]
                prob += de >= m[i] - big_l * (1 - fv)
                prob += al <= a[i] + m[i]  # (13e)
            # (13f) a_i + m_i <= a_j + m_j - 1 when used
            f[key], lin[key] = fv, (al, be, ga, de)
            n_blocks[key] = al + ga - be - de
            if j == "D":
                prob += be + de <= big_l + 1
            elif isinstance(j, int):
                prob += be + de <= a[j] + m[j] - 1
                objective.append(
                    n_c
                    * (
                        problem.link(c, j).rtt_s * fv
                        + problem.servers[j].decode_s_per_block * n_blocks[key]
                    )
                )
        # Valid inequalities, implied for integer points but not by the LP relaxation (they cut its
        # fractional flows): a used server-headed link processes at least one block, and along
        # the path the blocks processed telescope to exactly L.
        heads = [(i, j) for i, j in edges if j != "D"]
        for i, j in heads:
            prob += n_blocks[(u, i, j)] >= f[(u, i, j)]
        prob += pulp.lpSum(n_blocks[(u, i, j)] for i, j in heads) == big_l
        # (13c) one unit of flow from S to D
        for node in ["S", "D", *range(n)]:
            out_f = pulp.lpSum(f[(u, i, j)] for i, j in edges if i == node)
            in_f = pulp.lpSum(f[(u, i, j)] for i, j in edges if j == node)
            prob += out_f - in_f == (1 if node == "S" else -1 if node == "D" else 0)
    for j in range(n):
        prob += a[j] + m[j] <= big_l + 1  # (13d)
        # (13b) memory, in units of one session's KV cache of one block (keeps CBC's numbers small)
        used = pulp.lpSum(
            n_c * n_blocks[(u, i, jj)]
            for u, (_, n_c) in enumerate(units)
            for i, jj in edges
            if jj == j
        )
        prob += (problem.model.block_bytes / s_c) * m[j] + used <= problem.servers[
            j
        ].memory_bytes / s_c
    prob += pulp.lpSum(objective) / concurrent_requests

    warm = cg_bprr.solve(problem, concurrent_requests)
    if warm.feasible:
        _warm_start(problem, warm, units, a, m, f, lin)
    solver = _cbc(time_limit_s, warm.feasible)
    t0 = time.perf_counter()
    prob.solve(solver)
    wall = time.perf_counter() - t0
    status, sol_status = pulp.LpStatus[prob.status], pulp.LpSolution[prob.sol_status]
    has_solution = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    proven = prob.status == pulp.LpStatusOptimal and prob.sol_status == pulp.LpSolutionOptimal
    stats: dict[str, Any] = {
        "concurrent_requests": concurrent_requests,
        "milp_status": status,
        "milp_sol_status": sol_status,
        "milp_wall_s": wall,
        "time_limit_s": time_limit_s,
        "proven_optimal": proven,
    }
    if prob.status == pulp.LpStatusInfeasible:
        reason = (
            cg_bprr.infeasible_reason(problem, concurrent_requests)
            if not warm.feasible
            else "milp: infeasible"
        )
        return MilpResult(
            Plan(
                SOLVER,
                False,
                reason=f"{reason} (proven by the MILP)",
                stats=MappingProxyType(stats),
            ),
            False,
            status,
            sol_status,
        )
    if not has_solution:
        return _fallback(
            warm, stats, f"no MILP incumbent within {time_limit_s} s", status, sol_status
        )
    plan = _extract(problem, units, a, m, f, stats)
    if warm.feasible and warm.predicted is not None and plan.predicted is not None:
        if plan.predicted.per_token_s > warm.predicted.per_token_s * (1 + 1e-9):
            # CBC returned an incumbent worse than the warm start it was given: keep the better.
            return _fallback(
                warm, stats, "MILP incumbent worse than the CG-BPRR warm start", status, sol_status
            )
    return MilpResult(plan, proven, status, sol_status)


def _cbc(time_limit_s: float, warm_start: bool) -> Any:
    """CBC from `pulp[cbc]` (cbcbox), the packaging PuLP 4 keeps; PuLP's own bundled CBC otherwise."""
    import pulp

    try:
        import cbcbox
    except ImportError:
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, warmStart=warm_start)
    return pulp.COIN_CMD(
        path=cbcbox.cbc_bin_path(), msg=False, timeLimit=time_limit_s, warmStart=warm_start
    )


def _fallback(
    warm: Plan, stats: dict[str, Any], why: str, status: str, sol_status: str
) -> MilpResult:
    stats = {**stats, **dict(warm.stats), "proven_optimal": False, "fallback": f"cg-bprr: {why}"}
    if not warm.feasible:
        return MilpResult(
            Plan(SOLVER, False, reason=f"{warm.reason}; {why}", stats=MappingProxyType(stats)),
            False,
            status,
            sol_status,
        )
    plan = Plan(SOLVER, True, warm.placement, warm.routes, warm.predicted, MappingProxyType(stats))
    return MilpResult(plan, False, status, sol_status)


def _warm_start(
    problem: Problem,
    warm: Plan,
    units: list[tuple[int, int]],
    a: list[Any],
    m: list[Any],
    f: dict[tuple[int, Any, Any], Any],
    lin: dict[tuple[int, Any, Any], tuple[Any, Any, Any, Any]],
) -> None:
    placed = {p.server: p for p in warm.placement}
    a_val, m_val = [], []
    for j, s in enumerate(problem.servers):
        p = placed.get(s.name)
        a_val.append(p.start + 1 if p else 1)
        m_val.append(p.blocks if p else 0)
        a[j].setInitialValue(a_val[j])
        m[j].setInitialValue(m_val[j])
    for u, (c, _) in enumerate(units):
        chain = [problem.server_index(name) for name in warm.routes[problem.clients[c].name]]
        used = set(zip(["S", *chain], [*chain, "D"], strict=True))
        for key, fv in f.items():
            if key[0] != u:
                continue
            _, i, j = key
            on = 1 if (i, j) in used else 0
            fv.setInitialValue(on)
            al, be, ga, de = lin[key]
            al.setInitialValue(on * (problem.num_blocks + 1 if j == "D" else a_val[j]))
            be.setInitialValue(on * (0 if i == "S" else a_val[i]))
            ga.setInitialValue(on * (1 if j == "D" else m_val[j]))
            de.setInitialValue(on * (1 if i == "S" else m_val[i]))


def _extract(
    problem: Problem,
    units: list[tuple[int, int]],
    a: list[Any],
    m: list[Any],
    f: dict[tuple[int, Any, Any], Any],
    stats: dict[str, Any],
) -> Plan:
    placement = tuple(
        Placement(s.name, round(a[j].value()) - 1, round(m[j].value()))
        for j, s in enumerate(problem.servers)
        if round(m[j].value() or 0) > 0
    )
    placed = {p.server: p for p in placement}
    routes: dict[str, tuple[str, ...]] = {}
    for u, (c, _) in enumerate(units):
        node: Any = "S"
        chain: list[str] = []
        for _ in range(len(problem.servers) + 1):
            node = next(
                j
                for (uu, i, j), fv in f.items()
                if uu == u and i == node and (fv.value() or 0) > 0.5
            )
            if node == "D":
                break
            chain.append(problem.servers[node].name)
        routes[problem.clients[c].name] = tuple(chain)
    # Clients with no requests at this concurrency still need a chain: their CG-BPRR-style shortest one.
    missing = [cl for cl in problem.clients if cl.name not in routes]
    if missing:
        extra, _ = cg_bprr.route_clients(problem, placement)
        for cl in missing:
            routes[cl.name] = extra[cl.name]
    hops = [
        chain_hops(problem, placed, routes[cl.name]) if routes[cl.name] else []
        for cl in problem.clients
    ]
    predicted = predicted_for(problem, hops, None)
    if not math.isfinite(predicted.per_token_s):
        stats = {**stats, "note": "a client has no chain"}
    return Plan(
        SOLVER, True, placement, MappingProxyType(routes), predicted, MappingProxyType(stats)
    )
