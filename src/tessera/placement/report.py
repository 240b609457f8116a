"""A plan as a text table: ranges as bars, chains, predicted times and the solver's figures."""

from __future__ import annotations

import math

from .model import Placement, Plan, Problem

BAR_WIDTH = 60


def _bar(p: Placement, n_blocks: int) -> str:
    scale = BAR_WIDTH / n_blocks
    lo, hi = round(p.start * scale), max(round(p.end * scale), round(p.start * scale) + 1)
    return "." * lo + "#" * (hi - lo) + "." * (BAR_WIDTH - hi)


def render_table(problem: Problem, plan: Plan, baseline: Plan | None) -> str:
    lines = [f"solver: {plan.solver}   model: {problem.model.name} ({problem.num_blocks} blocks)"]
    if not plan.feasible:
        lines.append(f"INFEASIBLE: {plan.reason}")
        return "\n".join(lines)
    width = max(len(p.server) for p in plan.placement)
    lines.append(
        f"{'server'.ljust(width)}  {'blocks':>9}  0{' ' * (BAR_WIDTH - 2)}{problem.num_blocks}"
    )
    for p in plan.placement:
        lines.append(
            f"{p.server.ljust(width)}  {p.start:>3}..{p.end - 1:<4}  {_bar(p, problem.num_blocks)}"
        )
    lines.append("")
    for client, chain in plan.routes.items():
        lines.append(f"{client}: {' > '.join(chain)}")
    pred = plan.predicted
    if pred is not None:
        lines.append("")
        lines.append(f"predicted per-token time : {pred.per_token_s * 1000:.1f} ms")
        lines.append(f"predicted first-token    : {pred.first_token_s * 1000:.1f} ms")
        if pred.bound_per_token_s is not None:
            lines.append(f"Theorem 2 bound          : {pred.bound_per_token_s * 1000:.1f} ms")
    st = plan.statistics
    lines.append(
        f"concurrent requests      : {st.concurrent_requests} ({st.concurrent_requests_source})"
    )
    if plan.solver == "auto":
        lines.append(
            f"GPUs used                : {len(plan.placement)} of {len(problem.servers)}"
            f"{_bound(st.max_servers)}"
        )
        cg_s = st.cg_bprr_per_token_s
        if cg_s is not None and pred is not None and math.isfinite(cg_s) and cg_s > 0:
            lines.append(
                f"CG-BPRR on the same pool : {cg_s * 1000:.1f} ms/token "
                f"(this plan: {pred.per_token_s / cg_s:.2f}x; chosen: {st.chosen})"
            )
    if plan.solver in ("milp", "auto"):
        status = f" ({st.milp_status}/{st.milp_sol_status})" if st.milp_status else ""
        lines.append(f"proven optimal           : {st.proven_optimal}{status}")
        if st.fallback:
            lines.append(f"fallback                 : {st.fallback}")
    if baseline is not None:
        if baseline.feasible and baseline.predicted is not None and pred is not None:
            ratio = pred.per_token_s / baseline.predicted.per_token_s
            lines.append(
                f"PETALS on the same pool  : {baseline.predicted.per_token_s * 1000:.1f} ms/token "
                f"(this plan: {ratio:.2f}x), carries {baseline.statistics.concurrent_requests} "
                f"of {st.concurrent_requests} concurrent requests"
            )
        else:
            lines.append(f"PETALS on the same pool  : infeasible ({baseline.reason})")
    return "\n".join(lines)


def _bound(max_servers: int | None) -> str:
    return f" (bound {max_servers})" if max_servers is not None else ""
