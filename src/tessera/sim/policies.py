"""The policies the simulator compares: a placement, a KV capacity per server, a routing rule.

- `cg-bprr` (the paper's algorithm): CG-BPRR placement for the design |R|; every byte beside the
  weights is KV cache (`perf.server_slots`); WS-RR routing on live state; a request starts
  exactly when its chain has room (our router queues it).
- `auto` (the product's default): the `auto` solver's placement for the design |R|, with the
  same KV capacity, routing and queueing as `cg-bprr`.
- `petals`: PETALS placement (seeded random join order) with its fixed KV pool
  (`petals.cache_slots`); PETALS routing (+10 s weight for a server without free cache); a request
  that finds no room retries with exponential backoff (1, 2, 4 ... <= 60 s).
- Ablations, each PETALS with one thing changed: `petals-opt-order` (servers join in CG-BPRR's
  order), `petals-opt-number` (CG-BPRR's block counts, and so the memory they leave as KV cache),
  `petals-ws-rr` (WS-RR routing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from tessera.errors import InvalidInput
from tessera.placement import Placement, Problem, cg_bprr, perf, petals, solve
from tessera.placement.evaluate import uncovered

POLICIES = (
    "auto",
    "cg-bprr",
    "petals",
    "petals-opt-order",
    "petals-opt-number",
    "petals-ws-rr",
)
PRODUCT = ("auto", "cg-bprr")  # placed by our solvers: KV capacity is all memory beside weights
AUTO_TIME_LIMIT_S = 10.0  # auto's anytime limit in the simulator (what the operator defaults to)
Routing = Literal["ws-rr", "petals"]


@dataclass(frozen=True)
class Policy:
    name: str
    feasible: bool
    placement: tuple[Placement, ...] = ()
    slots: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )  # KV (block, session) slots of each server
    routing: Routing = "ws-rr"
    backoff: bool = False  # PETALS' client retries instead of waiting exactly
    concurrent_requests: int = 0  # the design |R| the placement was built for
    reason: str = ""


def _covered(problem: Problem, placement: tuple[Placement, ...]) -> str:
    missing = uncovered(problem.num_blocks, placement)
    if not missing:
        return ""
    return f"blocks {missing[0]}..{missing[-1]} are on no server"


def _cg_order(problem: Problem, concurrent_requests: int, blocks: list[int]) -> list[int]:
    """CG-BPRR's join order (increasing amortised time); servers it leaves out join last."""
    g = cg_bprr.greedy_place(problem, concurrent_requests)
    if g is not None:
        first = list(g.order)
    else:  # |R| infeasible for CG-BP: rank by amortised time with PETALS' own block counts
        usable = [j for j, m in enumerate(blocks) if m > 0]
        first = sorted(
            usable,
            key=lambda j: (
                problem.servers[j].decode_s_per_block + perf.farthest_rtt(problem, j) / blocks[j]
            ),
        )
    seen = set(first)
    return first + [j for j in range(len(problem.servers)) if j not in seen]


def build_policy(
    problem: Problem, name: str, concurrent_requests: int, petals_seed: int = 0
) -> Policy:
    """The placement and capacities of policy `name` for a problem and design |R|."""
    if name not in POLICIES:
        raise InvalidInput(
            "policies", f"unknown policy {name!r}; choose from {', '.join(POLICIES)}"
        )
    index = {s.name: j for j, s in enumerate(problem.servers)}
    sized = problem.with_concurrency(concurrent_requests)
    if name in PRODUCT:
        plan = solve(sized, "auto" if name == "auto" else "cg-bprr", time_limit_s=AUTO_TIME_LIMIT_S)
        if not plan.feasible:
            return Policy(
                name, False, concurrent_requests=concurrent_requests, reason=plan.reason or ""
            )
        slots = {
            p.server: perf.server_slots(problem, index[p.server], p.blocks) for p in plan.placement
        }
        return Policy(
            name, True, plan.placement, MappingProxyType(slots), "ws-rr", False, concurrent_requests
        )
    params = petals.PetalsParams.for_problem(problem, petals_seed)
    own_blocks = petals.choose_num_blocks(problem, params)
    if name == "petals-opt-number":
        blocks = cg_bprr.conservative_blocks(problem, concurrent_requests)
        placement = petals.place(problem, params, blocks=blocks)
    elif name == "petals-opt-order":
        order = _cg_order(problem, concurrent_requests, own_blocks)
        placement = petals.place(problem, params, order=order)
    else:
        placement = petals.place(problem, params)
    missing = _covered(problem, placement)
    if missing:
        return Policy(
            name, False, concurrent_requests=concurrent_requests, reason=f"{name}: {missing}"
        )
    if name == "petals-opt-number":
        # The point of fewer blocks is the memory they free: it becomes KV cache, as in CG-BPRR.
        slots = {p.server: perf.server_slots(problem, index[p.server], p.blocks) for p in placement}
    else:
        slots = {p.server: petals.cache_slots(problem, params, p.blocks) for p in placement}
    routing: Routing = "ws-rr" if name == "petals-ws-rr" else "petals"
    return Policy(
        name, True, placement, MappingProxyType(slots), routing, True, concurrent_requests
    )
