"""The simulator: speed at scale, and the paper's sweeps (product against PETALS, every cell).

1. Speed: 10,000 requests on 1,000 servers and 100,000 requests on 100 servers (targets < 10 s and
   < 30 s), a mixed pool of current cards serving a Llama-70B-class model, loaded so that requests
   do wait (|R| from the rate). The baseline, measured in the same run, is generating the arrivals
   plus routing each of them with no load at all (one WS-RR shortest chain per request, no cache).
2. The paper's sweeps (section 9.5), every policy (`auto` beside `cg-bprr` and the PETALS ones)
   on AboveNet, BellCanada and GTS-CE: servers, share of A100s, request rate and output length, with the paper's defaults elsewhere (40% of nodes are servers,
   20% of them A100, 0.5 req/s, 100 requests, 128 output tokens, 70 ms per-request delay, no
   60 s / 250 s allocation constants). Each cell is the mean over RUNS seeds (topology draw,
   arrivals and PETALS join order change together). Every policy sees the same arrivals.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import statistics
import time
from typing import Any

from tessera.cli.simulate import ScenarioFiles
from tessera.placement import Plan, choose_concurrency
from tessera.placement.generate import random_pool
from tessera.placement.routing import routing_table, service_costs, ws_rr
from tessera.sim import (
    POLICIES,
    build_policy,
    build_scenario,
    parse_scenario,
    poisson,
    run_policy,
    simulate,
)

RUNS = 3
FILES = ScenarioFiles(pathlib.Path(__file__).resolve().parent)
SCALE_CASES = (  # (servers, requests, rate per s, target s)
    (1000, 10_000, 20.0, 10.0),
    (100, 100_000, 5.0, 30.0),
)
BASELINE_SAMPLE = 3000  # requests routed by the baseline loop (it costs the same per request)
SWEEPS: dict[str, dict[str, list[float]]] = {
    "servers": {
        "AboveNet": [6, 10, 15, 20, 22],  # the paper's values
        "BellCanada": [10, 19, 29, 38, 46],  # the same shares of the nodes
        "GTS-CE": [30, 60, 89, 119, 145],
    },
    "fraction": {
        "AboveNet": [0.1, 0.2, 0.3, 0.4, 0.5],
        "BellCanada": [0.1, 0.2, 0.3, 0.4, 0.5],
        "GTS-CE": [0.01, 0.03, 0.06, 0.1, 0.3],
    },
    "rate": {t: [0.05, 0.1, 0.5, 1.0, 2.0] for t in ("AboveNet", "BellCanada", "GTS-CE")},
    "output_tokens": {t: [64, 128, 256, 384, 512] for t in ("AboveNet", "BellCanada", "GTS-CE")},
}


def _scale() -> None:
    print("Speed at scale (cg-bprr: CG-BPRR placement + WS-RR on live state)")
    head = (
        f"{'servers':>7} {'requests':>8} {'rate/s':>6} {'|R|':>5} {'waited':>7} {'sim s':>7} "
        f"{'target':>7} {'us/req':>7} {'baseline us/req':>15} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for servers, count, rate, target in SCALE_CASES:
        problem = random_pool(random.Random(1), servers, clients=2)
        w = dataclasses.replace(problem.workload, concurrent_requests=None, arrival_rate=rate)
        r, _ = choose_concurrency(dataclasses.replace(problem, workload=w))
        t0 = time.perf_counter()
        requests = poisson(problem, rate, count, random.Random(2))
        policy = build_policy(problem, "cg-bprr", r)
        served = simulate(problem, policy, requests)
        sim_s = time.perf_counter() - t0
        waited = sum(s.wait_s > 0 for s in served) / len(served)
        # Baseline: arrivals plus a no-wait routing loop (each request routed, nothing cached).
        t0 = time.perf_counter()
        sample = poisson(problem, rate, BASELINE_SAMPLE, random.Random(2))
        table = routing_table(problem, Plan("b", True, policy.placement))
        wl = problem.workload
        base = {
            c: service_costs(table, c, wl.max_input_tokens, wl.max_output_tokens)
            for c in range(len(problem.clients))
        }
        for req in sample:
            ws_rr(table, req.client, {}, base_costs=base[req.client])
        base_us = (time.perf_counter() - t0) / BASELINE_SAMPLE * 1e6
        per_req = sim_s / count * 1e6
        ok = "ok" if sim_s < target else "MISSED"
        print(
            f"{servers:>7} {count:>8} {rate:>6g} {r:>5} {waited:>6.0%} {sim_s:>7.2f} "
            f"{'<' + format(target, 'g') + ' ' + ok:>7} {per_req:>7.0f} {base_us:>15.0f} "
            f"{per_req / base_us:>6.2f}"
        )
    print("(waited: share of requests that waited for KV slots; ratio: simulator cost per request")
    print(" over the baseline's, so < 1 means the cached no-wait choice paid off)")


def _scenario(topology: str, param: str, value: float, run: int) -> dict[str, Any]:
    gen: dict[str, Any] = {
        "topology": topology,
        "server_fraction": 0.4,
        "classes": {"a100-80gb": 0.2, "mig-1g.10gb": 0.8},
        "workload": {"max_input_tokens": 20, "max_output_tokens": 128},
        "seed": run,
    }
    arrivals: dict[str, Any] = {"rate": 0.5, "count": 100, "seed": 100 + run}
    if param == "rate":  # the paper's N_R = 200 lambda
        arrivals["count"] = max(int(200 * value), 10)
    return {
        "generate": gen,
        "arrivals": arrivals,
        "policies": list(POLICIES),
        "concurrent_requests": "auto",
        "request_overhead_s": 0.07,
        "petals_seed": run,
    }


def _sweeps() -> None:
    print(f"\nThe paper's sweeps: mean per-token time (s/token), mean of {RUNS} runs per cell")
    names = list(POLICIES)
    head = f"{'topology':<10} {'sweep':<13} {'value':>6} " + " ".join(f"{n:>17}" for n in names)
    head += f" {'petals/ours':>11} {'ours wins':>9}"
    print(head)
    print("-" * len(head))
    cells = wins = 0
    losses: list[str] = []
    auto_vs_cg: list[float] = []  # auto's online per-token time over cg-bprr's, per cell
    auto_wins_petals = 0
    for param, per_topology in SWEEPS.items():
        for topology, values in per_topology.items():
            for value in values:
                totals = dict.fromkeys(names, 0.0)
                infeasible: set[str] = set()
                for run in range(1, RUNS + 1):
                    spec = parse_scenario(_scenario(topology, param, value, run))
                    scenario = build_scenario(spec, FILES, (param, value))
                    for name in names:
                        res = run_policy(scenario, name)
                        if not res.policy.feasible:
                            infeasible.add(name)
                        else:
                            totals[name] += res.summary.per_token_s / RUNS
                shown = [("infeasible" if n in infeasible else f"{totals[n]:.3f}") for n in names]
                ours, theirs = totals["cg-bprr"], totals["petals"]
                if "cg-bprr" in infeasible:
                    verdict, ratio = "NO", "-"
                elif "petals" in infeasible:
                    verdict, ratio = "yes*", "-"
                else:
                    verdict = "yes" if ours < theirs else "NO"
                    ratio = f"{theirs / ours:.2f}"
                cells += 1
                wins += verdict.startswith("yes")
                if "auto" not in infeasible and "cg-bprr" not in infeasible:
                    auto_vs_cg.append(totals["auto"] / ours)
                if "auto" not in infeasible and ("petals" in infeasible or totals["auto"] < theirs):
                    auto_wins_petals += 1
                if verdict == "NO":
                    losses.append(f"{topology} {param}={value:g}: ours {ours:.3f} vs {theirs:.3f}")
                print(
                    f"{topology:<10} {param:<13} {value:>6g} "
                    + " ".join(f"{s:>17}" for s in shown)
                    + f" {ratio:>11} {verdict:>9}"
                )
    print("(yes*: PETALS cannot place every block at all in some run; ours can)")
    print(f"product beats PETALS in {wins} of {cells} cells" + ("" if losses else ": every cell"))
    for loss in losses:
        print(f"  LOST: {loss}")
    if auto_vs_cg:
        auto_vs_cg.sort()
        print(
            f"auto (the default solver) beats PETALS in {auto_wins_petals} of {cells} cells; "
            f"online auto/cg-bprr per-token: median {statistics.median(auto_vs_cg):.3f}, "
            f"best {auto_vs_cg[0]:.3f}, worst {auto_vs_cg[-1]:.3f} over {len(auto_vs_cg)} cells"
        )


def main() -> None:
    _scale()
    _sweeps()


if __name__ == "__main__":
    main()
