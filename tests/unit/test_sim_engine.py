"""The simulator's engine: waits and slot release on hand-made timelines, backoff, the memory
invariant, determinism, agreement with the performance model at low load, and agreement with a
naive re-implementation (no caches, no truncated loads)."""

from __future__ import annotations

import heapq
import math
import pathlib
import random
from types import MappingProxyType

import numpy as np
import pytest
import yaml

from tessera.placement import (
    Client,
    Link,
    ModelSpec,
    Placement,
    Plan,
    PrefillCost,
    Problem,
    Server,
    Workload,
    perf,
    petals,
    problem_from_dict,
)
from tessera.placement.paths import best_chain
from tessera.placement.routing import (
    ServerLoad,
    routing_table,
    service_costs,
    wait_for_slots,
    ws_rr,
)
from tessera.sim import POLICIES, Policy, Request, build_policy, poisson, simulate, summarise
from tessera.sim.engine import Served, backoff_wait

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTERED = ROOT / "examples" / "problems" / "paper-clustered-9.yaml"

# One hop of the tiny problem: prefill 0.2 + 2 blocks x 0.05, then 2 decode steps of
# 0.1 + 2 x 0.01: 0.3 + 0.24 = 0.54 s for a request of 3 output tokens.
SERVICE_S = 0.54


def tiny(servers: int = 1) -> Problem:
    srv = tuple(Server(f"s{j}", 10**9, 0.01, PrefillCost(0.0, 0.05)) for j in range(servers))
    links = tuple(Link("c0", s.name, 0.1, 0.2) for s in srv)
    return Problem(ModelSpec("m", 2, 10**6, 10), Workload(1, 3, 1), srv, (Client("c0"),), links)


def whole_model_policy(problem: Problem, slots: int, *, backoff: bool = False) -> Policy:
    """Every server holds both blocks and `slots` KV slots (one session needs 2)."""
    placement = tuple(Placement(s.name, 0, 2) for s in problem.servers)
    caps = MappingProxyType({s.name: slots for s in problem.servers})
    return Policy("hand", True, placement, caps, "ws-rr", backoff, 1)


def reqs(*times: float) -> tuple[Request, ...]:
    return tuple(Request(t, 0, 1, 3) for t in times)


def test_requests_wait_for_slots_and_slots_are_released_at_completion() -> None:
    problem = tiny()
    out = simulate(problem, whole_model_policy(problem, slots=2), reqs(0.0, 0.1, 0.2, 5.0))
    starts = [s.start_s for s in out]
    assert starts == pytest.approx([0.0, SERVICE_S, 2 * SERVICE_S, 5.0])
    assert [s.completion_s for s in out] == pytest.approx(
        [SERVICE_S, 2 * SERVICE_S, 3 * SERVICE_S, 5.0 + SERVICE_S]
    )
    assert out[1].wait_s == pytest.approx(SERVICE_S - 0.1)
    assert out[3].wait_s == 0.0  # everything was released by then


def test_a_second_server_takes_the_request_instead_of_waiting() -> None:
    problem = tiny(servers=2)
    out = simulate(problem, whole_model_policy(problem, slots=2), reqs(0.0, 0.1, 0.2))
    assert out[0].chain != out[1].chain
    assert out[1].wait_s == 0.0
    assert out[2].start_s == pytest.approx(SERVICE_S)  # both busy: the first to finish
    assert out[2].chain == out[0].chain


def test_overhead_delays_first_token_and_completion_and_holds_the_slots() -> None:
    problem = tiny()
    out = simulate(problem, whole_model_policy(problem, slots=2), reqs(0.0, 0.1), overhead_s=1.0)
    assert out[0].first_token_s == pytest.approx(1.0 + 0.3)
    assert out[0].completion_s == pytest.approx(1.0 + SERVICE_S)
    assert out[1].start_s == pytest.approx(1.0 + SERVICE_S)


@pytest.mark.parametrize(
    ("wait", "rounded"),
    [
        (0.0, 0.0),
        (0.2, 1.0),
        (1.0, 1.0),
        (1.5, 3.0),
        (3.0, 3.0),
        (10.0, 15.0),
        (63.0, 63.0),
        (64.0, 123.0),
        (200.0, 243.0),
    ],
)
def test_backoff_rounds_up_to_the_retry_schedule(wait: float, rounded: float) -> None:
    assert backoff_wait(wait) == pytest.approx(rounded)


def test_petals_client_starts_at_its_next_retry() -> None:
    problem = tiny()
    out = simulate(problem, whole_model_policy(problem, 2, backoff=True), reqs(0.0, 0.1))
    assert out[1].start_s == pytest.approx(0.1 + 1.0)  # memory frees at 0.54, first retry at +1 s


def clustered() -> Problem:
    return problem_from_dict(yaml.safe_load(CLUSTERED.read_text()))


def no_server_overcommitted(policy: Policy, served: tuple[Served, ...]) -> None:
    """Sweep every server's timeline: running slots never exceed its capacity."""
    events: dict[str, list[tuple[float, int]]] = {}
    for s in served:
        for name, k in zip(s.chain, s.blocks, strict=True):
            events.setdefault(name, []).append((s.start_s, k))
            events.setdefault(name, []).append((s.completion_s, -k))
    for name, ev in events.items():
        running = 0
        # Releases first on ties; times within 1e-9 s are ties (start = now + (completion - now)).
        for _t, delta in sorted(ev, key=lambda e: (round(e[0], 9), e[1])):
            running += delta
            assert running <= policy.slots[name], f"{policy.name}: {name} runs {running} slots"


@pytest.mark.parametrize("name", POLICIES)
def test_a_request_never_starts_on_a_server_without_memory(name: str) -> None:
    problem = clustered()
    requests = poisson(problem, 2.0, 150, random.Random(3))
    policy = build_policy(problem, name, 20)
    served = simulate(problem, policy, requests)
    assert sum(s.wait_s > 0 for s in served) > 10  # the test only means something under load
    no_server_overcommitted(policy, served)


def test_same_seed_same_numbers_and_another_seed_differs() -> None:
    problem = clustered()
    policy = build_policy(problem, "cg-bprr", 12)
    a = simulate(problem, policy, poisson(problem, 0.5, 60, random.Random(1)))
    b = simulate(
        problem, build_policy(problem, "cg-bprr", 12), poisson(problem, 0.5, 60, random.Random(1))
    )
    c = simulate(problem, policy, poisson(problem, 0.5, 60, random.Random(2)))
    assert a == b
    assert summarise(a, 12) == summarise(b, 12)
    assert summarise(a, 12) != summarise(c, 12)


@pytest.mark.parametrize("name", ["cg-bprr", "petals"])
def test_at_a_very_low_rate_per_token_time_is_the_performance_models(name: str) -> None:
    problem = clustered()
    requests = poisson(problem, 1e-4, 30, random.Random(5), output_tokens=100)
    policy = build_policy(problem, name, 8)
    served = simulate(problem, policy, requests)
    placed = {p.server: p for p in policy.placement}
    expected = []
    for s in served:
        assert s.wait_s == 0.0
        hops = perf.chain_hops(problem, placed, s.chain)
        service = perf.request_s(problem, s.request.client, hops, 20, 100)
        assert s.completion_s - s.request.arrival_s == pytest.approx(service)
        assert s.first_token_s - s.request.arrival_s == pytest.approx(
            perf.first_token_s(problem, s.request.client, hops, 20)
        )
        expected.append(service / 100)
    assert summarise(served, 8).per_token_s == pytest.approx(float(np.mean(expected)))


def naive(problem: Problem, policy: Policy, requests: tuple[Request, ...]) -> list[tuple]:
    """The engine's rules written plainly: full loads of every server, no cached choices."""
    table = routing_table(problem, Plan(policy.name, True, policy.placement))
    free = {n: policy.slots[n] for n in table.names}
    active: dict[str, list[tuple[float, int]]] = {n: [] for n in table.names}
    out = []
    for r in requests:
        for n in table.names:
            for c, k in [x for x in active[n] if x[0] <= r.arrival_s]:
                active[n].remove((c, k))
                free[n] += k
        loads = {
            n: ServerLoad(free[n], tuple((c - r.arrival_s, k) for c, k in active[n]))
            for n in table.names
        }
        base = service_costs(table, r.client, r.input_tokens, r.output_tokens)
        if policy.routing == "ws-rr":
            choice = ws_rr(
                table, r.client, loads, input_tokens=r.input_tokens, output_tokens=r.output_tokens
            )
            assert choice is not None
            chain, ks, wait = choice.chain, choice.blocks, choice.wait_s
        else:
            full = [row for row, n in enumerate(table.names) if free[n] < table.graph.blocks[row]]
            _, hops = best_chain(
                table.graph, petals.hop_costs(problem, table.graph, r.client, full)
            )
            chain = tuple(table.names[row] for row, _ in hops)
            ks = tuple(k for _, k in hops)
            wait = max(wait_for_slots(loads[n], k) for n, k in zip(chain, ks, strict=True))
        if policy.backoff:
            wait = backoff_wait(wait)
        service = sum(float(base[table.rows[n], k - 1]) for n, k in zip(chain, ks, strict=True))
        completion = r.arrival_s + wait + service
        for n, k in zip(chain, ks, strict=True):
            free[n] -= k
            heapq.heappush(active[n], (completion, k))
        out.append((chain, ks, r.arrival_s + wait, completion))
    return out


@pytest.mark.parametrize("name", POLICIES)
def test_engine_matches_a_naive_implementation_under_load(name: str) -> None:
    problem = clustered()
    requests = poisson(problem, 1.0, 120, random.Random(11))
    policy = build_policy(problem, name, 25)
    served = simulate(problem, policy, requests)
    expected = naive(problem, policy, requests)
    assert [(s.chain, s.blocks) for s in served] == [(c, k) for c, k, _, _ in expected]
    assert [s.start_s for s in served] == pytest.approx([t for _, _, t, _ in expected])
    assert [s.completion_s for s in served] == pytest.approx([t for _, _, _, t in expected])


def test_an_infeasible_policy_serves_nothing() -> None:
    problem = tiny()
    assert simulate(problem, Policy("x", False, reason="no"), reqs(0.0)) == ()
    assert math.isnan(summarise((), 1).per_token_s)
