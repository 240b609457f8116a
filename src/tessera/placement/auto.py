"""`auto`: the best plan found within the time limit, never worse than CG-BPRR (its floor).

Candidates, each checked by `validate` at the declared concurrency and scored by the predicted
per-token time (client-weighted); on a tie, by the per-token time of the best chain an idle pool
offers (what the online router gives while there is room); the first best wins, so full ties
keep CG-BPRR:
1. CG-BPRR on the servers it would use under the bound: the floor, and its Theorem 2 bound.
2. Dedicated chains (chains.py): clients in groups (all together; each alone, in two orders; every
   split of up to 4 clients), each group's chain chosen exactly over the servers still free,
   sized for the group's own sessions rather than CG-BP's all-|R| count; then the same behind a
   shared first segment that carries every session. Servers left within the bound are placed by
   CG-BP as spare capacity when they cover the model by themselves, sized for |R| or, in a second
   variant, for |R|/2: the planned chains still carry all |R|, and the spare servers' longer
   ranges give the online router shorter chains (fewer hops) while they have room.
3. PETALS, when its routes carry the declared concurrency.
4. The best placement so far with its own shortest chains, when they fit.
5. The exact MILP on small pools without a bound, with the time left, unless 2. already proved
   its chain optimal (one client: the DP is exact).
Anytime: after the floor, a candidate is tried only while the time limit lasts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType

import numpy as np

from . import cg_bprr, milp, petals
from .chains import best_dedicated_chain, chain_table, is_exhaustive
from .evaluate import evaluate_placement, plan_with_routes
from .model import Placement, Plan, Predicted, Problem
from .paths import FloatArray
from .perf import requests_per_client
from .subset import fastest_servers, restrict
from .validate import validate

SOLVER = "auto"
# A candidate replaces the best so far only when clearly better: float noise between equal chains
# must not trade CG-BPRR's full pool for a bare chain of the same speed.
MIN_GAIN = 1e-9
PARTITION_MAX_CLIENTS = 4  # every split of the clients into chain groups up to this many
MILP_MAX_SERVERS = 6
SPLITS_TRIED = 3  # lengths of a shared first segment built exactly, of the best estimated  # the MILP proves optimality on pools this small within seconds (bench)


def _per_token(plan: Plan) -> float:
    return plan.predicted.per_token_s if plan.feasible and plan.predicted is not None else math.inf


def _better(problem: Problem, plan: Plan, best: Plan) -> bool:
    """Valid at the declared concurrency and clearly faster per token than the best so far; on a
    tie, clearly faster for a request that finds the pool idle (the best chain over the whole
    placement, memory aside): the online router takes such chains while they have room."""
    if not plan.feasible or validate(problem, plan):
        return False
    new, old = _per_token(plan), _per_token(best)
    if not math.isfinite(old) or new < old * (1 - MIN_GAIN):
        return True
    if new > old * (1 + MIN_GAIN):
        return False
    return _idle_per_token(problem, plan) < _idle_per_token(problem, best) * (1 - MIN_GAIN)


def _idle_per_token(problem: Problem, plan: Plan) -> float:
    return _per_token(evaluate_placement(problem, plan.placement, 0, SOLVER))


def dedicated_chains(
    problem: Problem,
    concurrent_requests: int,
    groups: Sequence[Sequence[int]],
    budget: int,
    shared_blocks: int = 0,
    spare_sessions: int | None = None,
) -> Plan | None:
    """One exact chain per group of clients over disjoint servers, plus spare CG-BP capacity
    (sized for `spare_sessions` per block, default |R|: fewer give the spare servers longer
    ranges, so shorter chains that the online router fills while they have room).

    With `shared_blocks` > 0, every client first goes through one shared chain holding blocks
    [0, shared_blocks) for all sessions, and the groups' own chains hold the rest (the shape the
    MILP finds on mixed pools: a big card shared, then one tail per client)."""
    n, n_blocks = len(problem.servers), problem.num_blocks
    sessions = requests_per_client(problem, concurrent_requests)
    tau = np.array([s.decode_s_per_block for s in problem.servers])
    free, left = set(range(n)), budget
    placement: dict[int, Placement] = {}
    routes: dict[str, tuple[str, ...]] = {}

    def lay(chain: list[tuple[int, int]], start: int) -> list[str]:
        names = []
        for j, k in sorted(chain):
            placement[j] = Placement(problem.servers[j].name, start, k)
            names.append(problem.servers[j].name)
            start += k
            free.discard(j)
        return names

    prefix: list[str] = []
    if shared_blocks > 0:
        everyone = range(len(problem.clients))
        _, chain = best_dedicated_chain(
            shared_blocks,
            _capacity(problem, concurrent_requests),
            _mean_rtt(problem, everyone),
            tau,
            sorted(free),
            left - len(groups),
        )
        if not chain:
            return None
        prefix = lay(chain, 0)
        left -= len(chain)
    for gi, group in enumerate(groups):
        capacity = _capacity(problem, sum(sessions[c] for c in group))
        later = len(groups) - gi - 1  # keep at least one server for each later group
        _, chain = best_dedicated_chain(
            n_blocks - shared_blocks,
            capacity,
            _mean_rtt(problem, group),
            tau,
            sorted(free),
            left - later,
        )
        if not chain:
            return None
        names = lay(chain, shared_blocks)
        left -= len(chain)
        for c in group:
            routes[problem.clients[c].name] = (*prefix, *names)
    if left > 0 and free:
        rest = restrict(problem, (problem.servers[j].name for j in sorted(free)))
        if left < len(free):
            rest = restrict(rest, fastest_servers(rest, concurrent_requests, left))
        spare = cg_bprr.greedy_place(rest, spare_sessions or concurrent_requests)
        if spare is not None:
            for p in cg_bprr.placement_of(rest, spare):
                placement[problem.server_index(p.server)] = p
    ordered = tuple(placement[j] for j in sorted(placement))
    return plan_with_routes(problem, ordered, routes, concurrent_requests, SOLVER)


def shared_then_dedicated(
    problem: Problem,
    concurrent_requests: int,
    groups: Sequence[Sequence[int]],
    budget: int,
    splits: int = SPLITS_TRIED,
) -> Plan | None:
    """`dedicated_chains` with a shared first segment, at the `splits` most promising lengths:
    estimated by one DP table per chain over the whole pool (servers not yet kept apart)."""
    n_blocks, n = problem.num_blocks, len(problem.servers)
    sessions = requests_per_client(problem, concurrent_requests)
    tau = np.array([s.decode_s_per_block for s in problem.servers])
    total_w = sum(c.weight for c in problem.clients)
    everyone = range(len(problem.clients))
    shared = chain_table(
        n_blocks,
        _capacity(problem, concurrent_requests),
        _mean_rtt(problem, everyone),
        tau,
        range(n),
        budget,
    )
    tails = [
        (
            sum(problem.clients[c].weight for c in g) / total_w,
            chain_table(
                n_blocks,
                _capacity(problem, sum(sessions[c] for c in g)),
                _mean_rtt(problem, g),
                tau,
                range(n),
                budget,
            ),
        )
        for g in groups
    ]
    estimate = [
        shared.best_s(b) + sum(w * t.best_s(n_blocks - b) for w, t in tails)
        for b in range(1, n_blocks)
    ]
    order = sorted((e, b) for b, e in enumerate(estimate, start=1) if math.isfinite(e))
    best: Plan | None = None
    for _, b in order[:splits]:
        plan = dedicated_chains(problem, concurrent_requests, groups, budget, shared_blocks=b)
        if plan is not None and (best is None or _per_token(plan) < _per_token(best)):
            best = plan
    return best


def _mean_rtt(problem: Problem, clients: Iterable[int]) -> FloatArray:
    """Each server's per-token RTT, weighted over these clients."""
    group = list(clients)
    weight = sum(problem.clients[c].weight for c in group)
    return np.array(
        [
            sum(problem.clients[c].weight * problem.link(c, j).rtt_s for c in group) / weight
            for j in range(len(problem.servers))
        ]
    )


def _capacity(problem: Problem, sessions: int) -> list[int]:
    """Blocks each server can hold when it carries `sessions` sessions on each of them."""
    per_block = problem.model.block_bytes + problem.session_bytes_per_block * sessions
    return [min(s.memory_bytes // per_block, problem.num_blocks) for s in problem.servers]


def _partitions(items: list[int]) -> list[list[list[int]]]:
    """Every way to split `items` into groups (Bell(n) of them: 15 for 4 items)."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for part in _partitions(rest):
        out.append([[first], *part])
        for i in range(len(part)):
            out.append([*part[:i], [first, *part[i]], *part[i + 1 :]])
    return out


def _groupings(problem: Problem) -> list[list[list[int]]]:
    """Ways to share chains among clients: all together first, then each alone (heaviest first,
    then lightest first), then, for a few clients, every other split (heavier groups first)."""
    everyone = list(range(len(problem.clients)))
    out = [[everyone]]
    if len(everyone) > 1:
        heavy_first = sorted(everyone, key=lambda c: (-problem.clients[c].weight, c))
        out.append([[c] for c in heavy_first])
        out.append([[c] for c in reversed(heavy_first)])
    if 2 < len(everyone) <= PARTITION_MAX_CLIENTS:

        def weight(group: list[int]) -> float:
            return sum(problem.clients[c].weight for c in group)

        for part in _partitions(everyone):
            if 1 < len(part) < len(everyone):
                out.append(sorted(part, key=lambda g: (-weight(g), g)))
    return out


def _petals(problem: Problem, concurrent_requests: int, seed: int) -> Plan | None:
    plan = petals.solve(
        problem, concurrent_requests, petals.PetalsParams.for_problem(problem, seed)
    )
    if not plan.feasible or plan.predicted is None:
        return None
    return plan_with_routes(problem, plan.placement, plan.routes, concurrent_requests, SOLVER)


def _objective_is_milps(problem: Problem, concurrent_requests: int) -> bool:
    """The MILP weights clients by their requests; that is our objective when requests follow weights."""
    total = sum(c.weight for c in problem.clients)
    counts = requests_per_client(problem, concurrent_requests)
    return all(
        math.isclose(n / concurrent_requests, c.weight / total, rel_tol=1e-12)
        for n, c in zip(counts, problem.clients, strict=True)
    )


def solve(
    problem: Problem,
    concurrent_requests: int,
    *,
    deadline_s: float,
    max_servers: int | None = None,
    seed: int = 0,
) -> Plan:
    """`deadline_s`: a time.perf_counter() value after which no further candidate is started."""
    n, r = len(problem.servers), concurrent_requests
    budget = n if max_servers is None else min(max_servers, n)
    floor_problem = (
        problem if budget >= n else restrict(problem, fastest_servers(problem, r, budget))
    )
    floor = cg_bprr.solve(floor_problem, r)
    bound = floor.predicted.bound_per_token_s if floor.predicted is not None else None
    # (name, maker, whether its plan is the optimum): one client's dedicated chain is, when the
    # DP looks at every server (chains.py).
    makers: list[tuple[str, Callable[[], Plan | None], bool]] = [
        (
            f"chains x{len(g)}",
            lambda g=g: dedicated_chains(problem, r, g, budget),  # type: ignore[misc]
            len(problem.clients) == 1 and is_exhaustive(_capacity(problem, r)),
        )
        for g in _groupings(problem)
    ]
    loose = max(r // 2, 1)
    makers += [
        (
            f"chains x{len(g)}, spare for {loose}",
            lambda g=g: dedicated_chains(problem, r, g, budget, spare_sessions=loose),  # type: ignore[misc]
            False,
        )
        for g in _groupings(problem)[:3]
        if loose < r
    ]
    makers += [
        (
            f"shared + chains x{len(g)}",
            lambda g=g: shared_then_dedicated(problem, r, g, budget),  # type: ignore[misc]
            False,
        )
        for g in _groupings(problem)
        if len(g) > 1
    ]
    makers.append(("petals", lambda: _petals(floor_problem, r, seed), False))
    proven_s = math.inf  # a proven optimum in our objective (the DP's or the MILP's)
    settled = False  # the DP was exact: nothing left for the MILP to find
    best_name, best = "cg-bprr", floor
    tried = 1
    for name, make, exact in makers:
        if time.perf_counter() >= deadline_s:
            break
        tried += 1
        plan = make()
        if exact:
            settled = True
            if plan is not None and not validate(problem, plan):
                proven_s = _per_token(plan)
        if plan is not None and _better(problem, plan, best):
            best_name, best = name, plan
    if best_name != "cg-bprr" and time.perf_counter() < deadline_s:
        # The best placement's own shortest chains (through spare servers too) may fit as well.
        tried += 1
        plan = evaluate_placement(problem, best.placement, r, SOLVER)
        if _better(problem, plan, best):
            best_name, best = f"{best_name}, rerouted", plan
    # CBC overruns its own limit by its start-up and the model's writing: leave it a margin.
    milp_s = 0.8 * (deadline_s - time.perf_counter()) - 0.2
    if budget >= n and n <= MILP_MAX_SERVERS and milp_s > 0.1 and not settled:
        tried += 1
        result = milp.solve(problem, r, milp_s)
        plan = result.plan
        if result.proven_optimal and _objective_is_milps(problem, r):
            proven_s = _per_token(plan)
        if plan.feasible and _better(problem, plan, best):
            best_name, best = "milp", plan
    if not best.feasible or best.predicted is None:
        return Plan(SOLVER, False, reason=best.reason, stats=best.stats)
    stats = {
        "concurrent_requests": r,
        "chosen": best_name,
        "candidates_tried": tried,
        "cg_bprr_per_token_s": _per_token(floor),
        "theorem2_bound_per_token_s": bound,
        "proven_optimal": math.isfinite(proven_s) and _per_token(best) <= proven_s * (1 + 1e-9),
    }
    predicted = Predicted(best.predicted.per_token_s, best.predicted.first_token_s, bound)
    return Plan(SOLVER, True, best.placement, best.routes, predicted, MappingProxyType(stats))
