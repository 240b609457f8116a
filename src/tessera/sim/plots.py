"""Plots of simulated runs, returned as PNG bytes (the caller writes them; Agg backend, no display).

- `runs_png`: per-token time by policy (bars: mean; whiskers: p50 to p95), the CDF of per-token
  time, and the placement of each policy (a row per server, its block range as a bar coloured by
  GPU class).
- `sweep_png`: mean per-token time of each policy against the swept parameter (p95 thin).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from tessera.placement import Problem  # noqa: E402

from .metrics import Summary, per_token_times  # noqa: E402
from .run import PolicyRun  # noqa: E402

POLICY_COLOURS = {
    "auto": "#17becf",
    "cg-bprr": "#1f77b4",
    "petals": "#d62728",
    "petals-opt-order": "#ff7f0e",
    "petals-opt-number": "#2ca02c",
    "petals-ws-rr": "#9467bd",
}
# Distinct dashes too, so that policies with identical results still show as separate lines.
POLICY_STYLES = {
    "auto": "-",
    "cg-bprr": "-",
    "petals": "-",
    "petals-opt-order": "--",
    "petals-opt-number": "-.",
    "petals-ws-rr": ":",
}
CLASS_CMAP = plt.get_cmap("Set2")
SWEEP_LABELS = {
    "servers": "servers",
    "fraction": "share of the first GPU class",
    "rate": "arrival rate (requests/s)",
    "output_tokens": "output tokens per request",
}


def gpu_class(name: str) -> str:
    """The GPU class a server name shows: `a100-80gb@Chicago` -> a100-80gb, `mig-3` -> mig."""
    m = re.match(r"^(.*?)(?:@.*|-\d+)$", name)
    return m.group(1) if m and m.group(1) else name


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _bars(ax: Axes, runs: Mapping[str, PolicyRun]) -> None:
    names = [n for n, r in runs.items() if r.summary.completed]
    mean = np.array([runs[n].summary.per_token_s for n in names])
    p50 = np.array([runs[n].summary.p50_per_token_s for n in names])
    p95 = np.array([runs[n].summary.p95_per_token_s for n in names])
    x = np.arange(len(names))
    ax.bar(x, mean, color=[POLICY_COLOURS.get(n, "grey") for n in names], alpha=0.85)
    lo, hi = np.minimum(p50, mean), np.maximum(p95, mean)
    ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor="black", capsize=6)
    for xi, m in zip(x, mean, strict=True):
        ax.annotate(
            f"{m:.2f}",
            (xi, m),
            ha="center",
            va="bottom",
            xytext=(12, 2),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylabel("per-token time (s/token)")
    ax.set_title("Mean per-token time (whiskers: p50 to p95)")
    ax.grid(axis="y", alpha=0.3)


def _cdf(ax: Axes, runs: Mapping[str, PolicyRun]) -> None:
    for name, run in runs.items():
        values = np.sort(per_token_times(run.served))
        if not len(values):
            continue
        ax.step(
            values,
            np.arange(1, len(values) + 1) / len(values),
            where="post",
            label=name,
            color=POLICY_COLOURS.get(name, "grey"),
            linestyle=POLICY_STYLES.get(name, "-"),
            linewidth=2.2 if name == "cg-bprr" else 1.5,
        )
    ax.set_xscale("log")
    ax.set_xlabel("per-token time (s/token, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_title("CDF of per-token time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")


def _placement(ax: Axes, problem: Problem, run: PolicyRun, colours: Mapping[str, object]) -> None:
    rows = sorted(run.policy.placement, key=lambda p: (p.start, p.server))
    for y, p in enumerate(rows):
        ax.broken_barh(
            [(p.start, p.blocks)],
            (y - 0.4, 0.8),
            facecolors=colours[gpu_class(p.server)],
            edgecolor="black",
            linewidth=0.4,
        )
        sessions = run.policy.slots.get(p.server, 0) // max(p.blocks, 1)
        ax.text(
            p.end + 0.5,
            y,
            f"{p.start}-{p.end - 1} ({sessions} full sessions)",
            va="center",
            fontsize=6,
        )
    ax.set_yticks(range(len(rows)), [p.server for p in rows], fontsize=6 if len(rows) > 12 else 8)
    ax.invert_yaxis()
    ax.set_xlim(0, problem.num_blocks * 1.45)
    ax.set_xlabel("block index")
    ax.set_title(f"Placement: {run.policy.name}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def runs_png(problem: Problem, runs: Mapping[str, PolicyRun], title: str) -> bytes:
    ok = {n: r for n, r in runs.items() if r.policy.feasible}
    n = max(len(ok), 1)
    n_servers = max((len(r.policy.placement) for r in ok.values()), default=1)
    fig = plt.figure(figsize=(max(11, 4.2 * n), 5 + max(3, 0.22 * n_servers)), layout="constrained")
    grid = fig.add_gridspec(2, 2 * n, height_ratios=[5, max(3, 0.22 * n_servers)])
    _bars(fig.add_subplot(grid[0, :n]), ok)
    _cdf(fig.add_subplot(grid[0, n:]), ok)
    classes = sorted({gpu_class(p.server) for r in ok.values() for p in r.policy.placement})
    colours = {c: CLASS_CMAP(i % CLASS_CMAP.N) for i, c in enumerate(classes)}
    for i, run in enumerate(ok.values()):
        _placement(fig.add_subplot(grid[1, 2 * i : 2 * i + 2]), problem, run, colours)
    fig.legend(
        handles=[Patch(color=colours[c], label=c) for c in classes],
        loc="outside lower center",
        title="GPU class (bars: each server's block range; in brackets: sessions its KV cache "
        "holds if each uses all its blocks)",
        ncols=max(len(classes), 1),
        fontsize=8,
    )
    fig.suptitle(title)
    return _png(fig)


def sweep_png(
    param: str, values: Sequence[float], cells: Sequence[Mapping[str, Summary]], title: str
) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    seen = {n for cell in cells for n in cell}
    names = [n for n in POLICY_COLOURS if n in seen] + sorted(seen - set(POLICY_COLOURS))
    for name in names:
        xs = [v for v, c in zip(values, cells, strict=True) if name in c and c[name].completed]
        mean = [c[name].per_token_s for c in cells if name in c and c[name].completed]
        p95 = [c[name].p95_per_token_s for c in cells if name in c and c[name].completed]
        colour = POLICY_COLOURS.get(name, "grey")
        ax.plot(
            xs,
            mean,
            marker="o",
            color=colour,
            linestyle=POLICY_STYLES.get(name, "-"),
            label=f"{name} (mean)",
        )
        ax.plot(xs, p95, marker="^", markersize=4, linewidth=0.8, color=colour, alpha=0.45)
    ax.plot(
        [],
        [],
        marker="^",
        markersize=4,
        color="black",
        linewidth=0.8,
        alpha=0.45,
        label="p95 (thin, triangles)",
    )
    ax.set_xlabel(SWEEP_LABELS.get(param, param))
    ax.set_ylabel("per-token time (s/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
