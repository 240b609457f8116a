"""Scenario parsing, the scattered-setting generator, arrivals and sweeps."""

from __future__ import annotations

import json
import pathlib
import random
from typing import Any

import numpy as np
import pytest
import yaml

from tessera.errors import InvalidInput
from tessera.sim import build_scenario, from_trace, parse_scenario, parse_sweep, poisson
from tessera.sim.topology import (
    Generator,
    Overhead,
    class_counts,
    generate,
    shortest_delays_s,
    topology_from_dict,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "src" / "tessera" / "data" / "topologies"
CLUSTERED = yaml.safe_load((ROOT / "examples" / "problems" / "paper-clustered-9.yaml").read_text())

# A line a - b - c - d - e (one-way delays 1, 2, 3, 4 ms), both directions listed.
LINE = {
    "name": "line",
    "delay_unit": "ms",
    "nodes": ["a", "b", "c", "d", "e"],
    "edges": [[i, j, d] for i, j, d in [(0, 1, 1), (1, 2, 2), (2, 3, 3), (3, 4, 4)]]
    + [[j, i, d] for i, j, d in [(0, 1, 1), (1, 2, 2), (2, 3, 3), (3, 4, 4)]],
}


class Files:
    def __init__(self, trace: list[dict[str, str]] | None = None) -> None:
        self.rows = trace or []

    def problem(self, ref: str) -> Any:
        assert ref == "clustered.yaml"
        return CLUSTERED

    def topology(self, ref: str) -> Any:
        if ref == "line":
            return LINE
        return json.loads((TOPOLOGIES / f"{ref}.json").read_text())

    def trace(self, ref: str) -> list[dict[str, str]]:
        return self.rows


def scenario(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"problem": "clustered.yaml", "arrivals": {"rate": 0.5, "count": 20}}
    return base | extra


def generated(**gen: Any) -> dict[str, Any]:
    g = {"topology": "AboveNet", "servers": 9, "seed": 1} | gen
    return {"generate": g, "arrivals": {"rate": 0.5, "count": 10, "seed": 2}}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (scenario(colour="red"), "colour"),
        (scenario(arrivals={"rate": 0.5, "count": 20, "burst": 1}), "arrivals.burst"),
        (scenario(arrivals={"rate": -1, "count": 20}), "arrivals.rate"),
        (scenario(arrivals={"rate": 1}), "arrivals"),
        (scenario(policies=["cg-bprr", "vllm"]), ""),
        (scenario(generate={"topology": "AboveNet", "servers": 9}), ""),
        (generated(servers=None), "generate"),
        (generated(classes={"a100-80gb": 0.5}), "generate"),
        (scenario(concurrent_requests="many"), "concurrent_requests"),
        (scenario(request_overhead_s={"petals": -1.0}), ""),
    ],
)
def test_bad_scenarios_are_rejected_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_scenario(data)
    assert err.value.field.startswith(field)


def test_unknown_names_in_generate_are_rejected() -> None:
    spec = parse_scenario(generated(classes={"b200": 1.0}))
    with pytest.raises(InvalidInput, match="b200"):
        build_scenario(spec, Files())
    spec = parse_scenario(generated(servers=30))
    with pytest.raises(InvalidInput, match="23"):
        build_scenario(spec, Files())


def test_floyd_warshall_and_round_trips_of_a_generated_problem() -> None:
    topo = topology_from_dict(LINE)
    d = shortest_delays_s(topo)
    assert d[0, 4] == pytest.approx(0.010)
    assert d[1, 3] == pytest.approx(0.005)
    oh = Overhead(per_token_s=0.1, prefill_fixed_s=0.067, prefill_per_input_token_s=0.0007049)
    problem = generate(Generator(topo, 3, (("a100-80gb", 1.0),), 1, oh, seed=4))
    nodes = {n: i for i, n in enumerate(topo.nodes)}
    client = nodes[problem.clients[0].name.split("@")[1]]
    for lk in problem.links:
        server = nodes[lk.server.split("@")[1]]
        assert server != client
        assert lk.rtt_s == pytest.approx(2 * d[client, server] + 0.1)
        assert lk.prefill_s == pytest.approx(2 * d[client, server] + 0.067 + 0.0007049 * 20)


def test_packaged_topologies_are_connected_and_match_the_paper() -> None:
    sizes = {"AboveNet": 23, "BellCanada": 48, "GTS-CE": 149}
    for name, n in sizes.items():
        topo = topology_from_dict(json.loads((TOPOLOGIES / f"{name}.json").read_text()))
        d = shortest_delays_s(topo)
        assert len(topo.nodes) == n
        assert np.isfinite(d).all()
        assert np.allclose(d, d.T)


@pytest.mark.parametrize(
    ("servers", "a100"), [(6, 1), (10, 2), (15, 3), (20, 4), (22, 4), (5, 1), (3, 1)]
)
def test_class_counts_round_like_the_paper(servers: int, a100: int) -> None:
    assert class_counts((("a100-80gb", 0.2), ("mig-1g.10gb", 0.8)), servers) == [
        a100,
        servers - a100,
    ]


def test_larger_server_counts_keep_the_smaller_ones_servers() -> None:
    spec = parse_scenario(generated())
    small = build_scenario(spec, Files(), ("servers", 6)).problem
    large = build_scenario(spec, Files(), ("servers", 15)).problem
    nodes = lambda p: {s.name.split("@")[1] for s in p.servers}  # noqa: E731
    assert nodes(small) < nodes(large)
    assert small.clients == large.clients
    fraction = build_scenario(parse_scenario(generated(servers=None, server_fraction=0.4)), Files())
    assert len(fraction.problem.servers) == 9  # round(0.4 x 23)


def test_fraction_sweep_sets_the_first_class_share() -> None:
    spec = parse_scenario(generated(servers=10))
    problem = build_scenario(spec, Files(), ("fraction", 0.5)).problem
    assert sum(s.name.startswith("a100") for s in problem.servers) == 5
    with pytest.raises(InvalidInput):
        build_scenario(parse_scenario(scenario()), Files(), ("fraction", 0.5))


def test_rate_and_output_sweeps_change_arrivals_and_cache_sizing() -> None:
    spec = parse_scenario(scenario(concurrent_requests="auto"))
    slow = build_scenario(spec, Files(), ("rate", 0.1))
    fast = build_scenario(spec, Files(), ("rate", 1.0))
    assert slow.concurrent_requests < fast.concurrent_requests
    assert slow.requests[-1].arrival_s > fast.requests[-1].arrival_s
    long = build_scenario(spec, Files(), ("output_tokens", 256))
    assert long.problem.workload.max_output_tokens == 256
    assert {r.output_tokens for r in long.requests} == {256}


def test_concurrency_given_by_problem_scenario_or_auto() -> None:
    assert build_scenario(parse_scenario(scenario()), Files()).concurrent_requests == 8
    given = build_scenario(parse_scenario(scenario(concurrent_requests=5)), Files())
    assert given.concurrent_requests == 5
    auto = build_scenario(parse_scenario(scenario(concurrent_requests="auto")), Files())
    assert auto.concurrency_source.startswith("auto")


def test_overhead_per_policy() -> None:
    spec = parse_scenario(scenario(request_overhead_s={"petals": 250.0}))
    s = build_scenario(spec, Files())
    assert dict(s.overhead_s) == {"cg-bprr": 0.0, "petals": 250.0}


def test_poisson_arrivals_start_at_zero_with_the_right_mean_gap() -> None:
    problem = build_scenario(parse_scenario(scenario()), Files()).problem
    reqs = poisson(problem, 2.0, 4000, random.Random(1))
    assert reqs[0].arrival_s == 0.0
    gaps = np.diff([r.arrival_s for r in reqs])
    assert gaps.mean() == pytest.approx(0.5, rel=0.05)
    clients = np.bincount([r.client for r in reqs])
    assert len(clients) == 3 and clients.min() > 1200  # equal weights


def test_trace_rows_by_name_or_index_sorted_and_checked() -> None:
    rows = [
        {"arrival_s": "2.5", "client": "c1", "input_tokens": "10", "output_tokens": "64"},
        {"arrival_s": "1.0", "client": "2", "input_tokens": "20", "output_tokens": "128"},
    ]
    spec = parse_scenario(scenario(arrivals={"trace": "t.csv"}, concurrent_requests=4))
    s = build_scenario(spec, Files(rows))
    assert [(r.arrival_s, r.client, r.output_tokens) for r in s.requests] == [
        (1.0, 2, 128),
        (2.5, 1, 64),
    ]
    bad = rows + [{"arrival_s": "3", "client": "c0", "input_tokens": "5", "output_tokens": "999"}]
    with pytest.raises(InvalidInput, match="row 3"):
        from_trace(s.problem, bad)


@pytest.mark.parametrize("text", ["servers", "speed=1,2", "rate=", "rate=a,b", "servers=1.5"])
def test_bad_sweeps_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput, match="--sweep"):
        parse_sweep(text)


def test_sweep_parsing() -> None:
    assert parse_sweep("servers=6,10,15") == ("servers", (6.0, 10.0, 15.0))
