"""`tessera simulate SCENARIO [--policy P ...] [--format json|table] [--plot FILE.png] [--sweep ...]`.

The edge of the simulator: reads the scenario and the files it names, runs each policy on the
same arrivals, times each run (wall_s), prints JSON or a table and writes the plot.
"""

from __future__ import annotations

import argparse
import csv
import importlib.resources
import json
import pathlib
import sys
import time
from typing import Any

from tessera.errors import InvalidInput
from tessera.sim import POLICIES, PolicyRun, Scenario, run_policy
from tessera.sim.scenarios import ScenarioIn, build_scenario, parse_scenario, parse_sweep
from tessera.sim.topology import TOPOLOGIES

from .files import load_mapping

EXIT_INFEASIBLE = 3


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate", help="simulate requests arriving on a pool under each policy (no GPU needed)"
    )
    p.add_argument("scenario", help="scenario file (YAML or JSON, see placement-contract.md)")
    p.add_argument(
        "--policy",
        action="append",
        choices=POLICIES,
        help="run this policy (repeat for several; default: the scenario's list)",
    )
    p.add_argument("--format", default="table", choices=["json", "table"])
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG of the results")
    p.add_argument(
        "--sweep",
        metavar="PARAM=V1,V2",
        help="run every policy for each value: servers=, fraction=, rate= or output_tokens=",
    )
    p.add_argument("--seed", type=int, help="PETALS join-order seed (default: the scenario's, 0)")
    p.add_argument("--arrivals-seed", type=int, help="override the scenario's arrivals seed")
    p.set_defaults(func=run)


class ScenarioFiles:
    """Reads what a scenario names, relative to the scenario file; topologies also by name."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base

    def _path(self, ref: str) -> pathlib.Path:
        p = pathlib.Path(ref)
        return p if p.is_absolute() else self.base / p

    def problem(self, ref: str) -> Any:
        return load_mapping(str(self._path(ref)))

    def topology(self, ref: str) -> Any:
        if ref in TOPOLOGIES:
            packaged = importlib.resources.files("tessera") / "data" / "topologies" / f"{ref}.json"
            return json.loads(packaged.read_text())
        path = self._path(ref)
        if not path.exists():
            raise InvalidInput(
                "generate.topology",
                f"{ref!r} is neither a file nor a built-in topology ({', '.join(TOPOLOGIES)})",
            )
        return load_mapping(str(path))

    def trace(self, ref: str) -> list[dict[str, str]]:
        try:
            with self._path(ref).open(newline="") as f:
                return list(csv.DictReader(f))
        except OSError as exc:
            raise InvalidInput("arrivals.trace", f"cannot read {ref}: {exc.strerror}") from None


def load_spec(path: str, args: argparse.Namespace | None = None) -> ScenarioIn:
    spec = parse_scenario(load_mapping(path))
    update: dict[str, Any] = {}
    if args is not None and args.policy:
        update["policies"] = list(dict.fromkeys(args.policy))
    if args is not None and args.seed is not None:
        update["petals_seed"] = args.seed
    if args is not None and args.arrivals_seed is not None:
        update["arrivals"] = spec.arrivals.model_copy(update={"seed": args.arrivals_seed})
    return spec.model_copy(update=update)


def run_all(scenario: Scenario) -> tuple[dict[str, PolicyRun], dict[str, float]]:
    runs: dict[str, PolicyRun] = {}
    walls: dict[str, float] = {}
    for name in scenario.policies:
        t0 = time.perf_counter()
        runs[name] = run_policy(scenario, name)
        walls[name] = time.perf_counter() - t0
    return runs, walls


def figures(runs: dict[str, PolicyRun], walls: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, r in runs.items():
        fig = r.summary.to_dict() | {"wall_s": round(walls[name], 6)}
        if not r.policy.feasible:
            fig["reason"] = r.policy.reason
        out[name] = fig
    return out


def run(args: argparse.Namespace) -> int:
    path = pathlib.Path(args.scenario)
    spec = load_spec(args.scenario, args)
    files = ScenarioFiles(path.resolve().parent)
    if args.sweep:
        return _sweep(args, path, spec, files)
    scenario = build_scenario(spec, files)
    runs, walls = run_all(scenario)
    if args.format == "json":
        json.dump({"policies": figures(runs, walls)}, sys.stdout, indent=2)
        print()
    else:
        print(_header(path, scenario))
        print(_table(runs, walls))
    if args.plot:
        from tessera.sim.plots import runs_png  # matplotlib only when a plot is asked for

        _write(args.plot, runs_png(scenario.problem, runs, _title(path, scenario)))
    return 0 if any(r.policy.feasible for r in runs.values()) else EXIT_INFEASIBLE


def _sweep(
    args: argparse.Namespace, path: pathlib.Path, spec: ScenarioIn, files: ScenarioFiles
) -> int:
    param, values = parse_sweep(args.sweep)
    cells: list[dict[str, Any]] = []
    summaries = []
    any_feasible = False
    for value in values:
        scenario = build_scenario(spec, files, (param, value))
        runs, walls = run_all(scenario)
        any_feasible |= any(r.policy.feasible for r in runs.values())
        shown = int(value) if param in ("servers", "output_tokens") else value
        cells.append({"parameter": param, "value": shown, "policies": figures(runs, walls)})
        summaries.append({n: r.summary for n, r in runs.items() if r.policy.feasible})
    if args.format == "json":
        json.dump(cells, sys.stdout, indent=2)
        print()
    else:
        print(_sweep_table(param, cells))
    if args.plot:
        from tessera.sim.plots import sweep_png

        title = f"{path.stem}: per-token time against {param}"
        _write(args.plot, sweep_png(param, values, summaries, title))
    return 0 if any_feasible else EXIT_INFEASIBLE


def _write(target: str, png: bytes) -> None:
    try:
        pathlib.Path(target).write_bytes(png)
    except OSError as exc:
        raise InvalidInput("--plot", f"cannot write {target}: {exc.strerror}") from None


def _title(path: pathlib.Path, s: Scenario) -> str:
    p = s.problem
    return (
        f"{path.stem}: {p.model.name}, {len(p.servers)} servers, {len(s.requests)} requests, "
        f"design |R| = {s.concurrent_requests}"
    )


def _header(path: pathlib.Path, s: Scenario) -> str:
    p = s.problem
    span = s.requests[-1].arrival_s if s.requests else 0.0
    return (
        f"scenario: {path.name}   model: {p.model.name} ({p.num_blocks} blocks)   "
        f"{len(p.servers)} servers, {len(p.clients)} client(s)\n"
        f"requests: {len(s.requests)} arriving over {span:.0f} s   "
        f"design |R|: {s.concurrent_requests} ({s.concurrency_source})"
    )


def _fmt(x: float | int | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _table(runs: dict[str, PolicyRun], walls: dict[str, float]) -> str:
    head = (
        f"{'policy':<18} {'s/token':>8} {'first s':>8} {'rest s':>7} {'p50':>7} {'p95':>7} "
        f"{'p99':>7} {'wait s':>8} {'done':>6} {'|R|':>4} {'sim s':>8} {'wall s':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, r in runs.items():
        if not r.policy.feasible:
            lines.append(f"{name:<18} infeasible: {r.policy.reason}")
            continue
        d = r.summary.to_dict()
        lines.append(
            f"{name:<18} {_fmt(d['per_token_s']):>8} {_fmt(d['first_token_s'], '.2f'):>8} "
            f"{_fmt(d['remaining_token_s']):>7} {_fmt(d['p50_per_token_s']):>7} "
            f"{_fmt(d['p95_per_token_s']):>7} {_fmt(d['p99_per_token_s']):>7} "
            f"{_fmt(d['mean_wait_s'], '.2f'):>8} {d['completed']:>6} {d['concurrent_requests']:>4} "
            f"{_fmt(d['simulated_s'], '.1f'):>8} {walls[name]:>7.3f}"
        )
    return "\n".join(lines)


def _sweep_table(param: str, cells: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(n for c in cells for n in c["policies"]))
    head = f"{param:>14} " + " ".join(f"{n:>18}" for n in names)
    lines = ["mean per-token time (s/token) per policy", head, "-" * len(head)]
    for c in cells:
        vals = [c["policies"][n].get("per_token_s") if n in c["policies"] else None for n in names]
        lines.append(f"{c['value']!s:>14} " + " ".join(f"{_fmt(v):>18}" for v in vals))
    return "\n".join(lines)
