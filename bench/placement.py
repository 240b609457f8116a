"""Placement benchmark: solve time and predicted per-token time of every solver.

Targets (issue 2): CG-BPRR solves 1000 servers x 80 blocks in < 1 s; the MILP proves optimality
on 6 servers, 12 blocks, 4 requests within 60 s; CG-BPRR within 15% of the MILP optimum on small
random problems (median within 2%). PETALS is the baseline, solved in the same process.
"""

from __future__ import annotations

import pathlib
import random
import statistics
import time

import yaml

from tessera.placement import Plan, Problem, problem_from_dict, solve
from tessera.placement.generate import random_pool, random_small

MILP_LIMIT_S = 60.0
RANDOM_SMALL = 20


def timed(problem: Problem, solver: str, **kw: float) -> tuple[Plan, float]:
    t0 = time.perf_counter()
    plan = solve(problem, solver, **kw)  # type: ignore[arg-type]
    return plan, time.perf_counter() - t0


def ms(plan: Plan) -> str:
    return (
        f"{plan.predicted.per_token_s * 1000:9.2f}"
        if plan.feasible and plan.predicted
        else "   infeas"
    )


def table() -> None:
    cases: list[tuple[str, Problem, bool]] = []
    for path in sorted(pathlib.Path("examples/problems").glob("*.yaml")):
        cases.append((path.stem, problem_from_dict(yaml.safe_load(path.read_text())), True))
    for n in (10, 100, 1000):
        cases.append((f"pool-{n} (80 blocks)", random_pool(random.Random(n), n), n <= 10))
    print(
        f"{'problem':24} {'cg-bprr s':>9} {'petals s':>9} {'milp s':>8} {'cg ms/tok':>9} "
        f"{'petals':>9} {'milp':>9} {'cg/petals':>9} {'cg/milp':>8} {'R':>3} {'petals R':>8} milp proven"
    )
    for name, problem, with_milp in cases:
        cg, t_cg = timed(problem, "cg-bprr")
        pe, t_pe = timed(problem, "petals")
        if with_milp:
            mi, t_mi = timed(problem, "milp", time_limit_s=MILP_LIMIT_S)
            proven = bool(mi.stats.get("proven_optimal"))
        else:
            mi, t_mi, proven = None, float("nan"), False
        ratio_pe = (
            f"{cg.predicted.per_token_s / pe.predicted.per_token_s:9.3f}"
            if cg.feasible and pe.feasible and cg.predicted and pe.predicted
            else "        -"
        )
        ratio_mi = (
            f"{cg.predicted.per_token_s / mi.predicted.per_token_s:8.3f}"
            if proven and mi and mi.predicted and cg.predicted
            else "       -"
        )
        print(
            f"{name:24} {t_cg:9.4f} {t_pe:9.4f} {t_mi:8.2f} {ms(cg)} {ms(pe)} "
            f"{ms(mi) if mi else '        -'} {ratio_pe} {ratio_mi} "
            f"{cg.stats.get('concurrent_requests', '-'):>3} {pe.stats.get('concurrent_requests', '-'):>8} "
            f"{proven if mi else '-'}{'' if not mi or 'fallback' not in mi.stats else ' (fallback)'}"
        )
        if name.startswith("pool-1000"):
            verdict = "met" if t_cg < 1.0 else "NOT met"
            print(f"  target: CG-BPRR 1000 servers x 80 blocks < 1 s: {t_cg:.3f} s ({verdict})")


def small_random() -> None:
    print(f"\n{RANDOM_SMALL} random problems, 6 servers, 12 blocks, 4 requests, 1-2 clients:")
    rng = random.Random(2026)
    times, gaps, proven = [], [], 0
    for i in range(RANDOM_SMALL):
        problem = random_small(rng, 6, 12, 1 + i % 2, 4)
        cg, _ = timed(problem, "cg-bprr")
        mi, t_mi = timed(problem, "milp", time_limit_s=MILP_LIMIT_S)
        times.append(t_mi)
        if mi.stats.get("proven_optimal"):
            proven += 1
            if cg.feasible and cg.predicted and mi.predicted:
                gaps.append(cg.predicted.per_token_s / mi.predicted.per_token_s - 1)
    print(f"  MILP proved optimality on {proven}/{RANDOM_SMALL} within {MILP_LIMIT_S:.0f} s;")
    print(f"  MILP time: median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    if gaps:
        worst, median = max(gaps), statistics.median(gaps)
        print(
            f"  CG-BPRR above the proven optimum: median {median * 100:.2f}%, worst {worst * 100:.2f}% "
            f"over {len(gaps)} feasible problems (targets: median <= 2%, worst <= 15%: "
            f"{'met' if median <= 0.02 and worst <= 0.15 else 'NOT met'})"
        )


def main() -> None:
    table()
    print(
        "  (R: concurrent requests the plan carries; PETALS sizes its KV pool without |R|,"
        " so its faster chains may carry fewer sessions)"
    )
    small_random()


if __name__ == "__main__":
    main()
