"""Network topologies (Internet Topology Zoo with REPETITA delays) and the paper's scattered setting.

A generated problem (reference section 8): nodes are shuffled with the seed; the first become
clients, the next become servers (so a larger server count keeps the smaller one's servers), the
first round(share x servers) servers get the first GPU class, and so on; the last class takes the
rest. The round trip between a client and a server is twice the shortest-path delay
(Floyd-Warshall) plus the per-token overhead; the prompt's is the same round trip plus
`prefill_fixed_s + prefill_per_input_token_s * max_input_tokens`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.errors import InvalidInput
from tessera.placement import Client, Link, ModelSpec, Problem, Server, Workload
from tessera.placement.catalog import GPU_CLASSES, MODELS, server_costs

TOPOLOGIES = ("AboveNet", "BellCanada", "GTS-CE")


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[str, ...]
    edges: tuple[tuple[int, int, float], ...]  # (from, to, one-way delay in seconds)


def topology_from_dict(data: Any, where: str = "generate.topology") -> Topology:
    """Parse a topology file: {name, delay_unit: ms|us|s, nodes: [...], edges: [[i, j, delay]...]}."""
    if not isinstance(data, Mapping):
        raise InvalidInput(where, "a topology must be a mapping with nodes and edges")
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}.get(str(data.get("delay_unit", "ms")))
    if scale is None:
        raise InvalidInput(f"{where}.delay_unit", "must be one of s, ms, us")
    nodes = data.get("nodes")
    edges = data.get("edges")
    if not isinstance(nodes, list) or len(nodes) < 2:
        raise InvalidInput(f"{where}.nodes", "needs a list of at least two node names")
    if not isinstance(edges, list):
        raise InvalidInput(f"{where}.edges", "needs a list of [from, to, delay]")
    out: list[tuple[int, int, float]] = []
    for n, e in enumerate(edges):
        ok = isinstance(e, list | tuple) and len(e) == 3
        if ok:
            i, j, d = e
            ok = (
                isinstance(i, int)
                and isinstance(j, int)
                and 0 <= i < len(nodes)
                and 0 <= j < len(nodes)
                and isinstance(d, int | float)
                and d >= 0
            )
        if not ok:
            raise InvalidInput(
                f"{where}.edges[{n}]", "must be [from index, to index, non-negative delay]"
            )
        out.append((i, j, float(d) * scale))
    return Topology(str(data.get("name", "topology")), tuple(str(x) for x in nodes), tuple(out))


def shortest_delays_s(topo: Topology) -> np.ndarray:
    """All-pairs shortest one-way delay (Floyd-Warshall); edges are used in the direction listed."""
    n = len(topo.nodes)
    d = np.full((n, n), math.inf)
    np.fill_diagonal(d, 0.0)
    for i, j, delay in topo.edges:
        d[i, j] = min(d[i, j], delay)
    for k in range(n):
        d = np.minimum(d, d[:, k, None] + d[None, k, :])
    return d


@dataclass(frozen=True)
class Overhead:
    per_token_s: float = 0.1
    prefill_fixed_s: float = 0.067
    prefill_per_input_token_s: float = 0.0007049


@dataclass(frozen=True)
class Generator:
    topology: Topology
    servers: int
    classes: tuple[tuple[str, float], ...]  # (GPU class, share), in order
    clients: int = 1
    overhead: Overhead = Overhead()
    model: str = "bloom-176b"
    max_input_tokens: int = 20
    max_output_tokens: int = 128
    seed: int = 0


def class_counts(classes: Sequence[tuple[str, float]], servers: int) -> list[int]:
    """round(share x servers) for every class but the last (half away from zero, as MATLAB's
    round in the paper's code); the last class takes the rest."""
    counts: list[int] = []
    for _name, share in classes[:-1]:
        counts.append(min(math.floor(share * servers + 0.5), servers - sum(counts)))
    counts.append(servers - sum(counts))
    return counts


def generate(gen: Generator) -> Problem:
    topo = gen.topology
    n = len(topo.nodes)
    if gen.clients < 1 or gen.servers < 1 or gen.clients + gen.servers > n:
        raise InvalidInput(
            "generate.servers",
            f"{gen.servers} servers and {gen.clients} client(s) need that many distinct nodes; "
            f"{topo.name} has {n}",
        )
    preset = MODELS.get(gen.model)
    if preset is None:
        raise InvalidInput(
            "generate.model", f"unknown model preset; choose from {', '.join(MODELS)}"
        )
    for name, _ in gen.classes:
        if name not in GPU_CLASSES:
            raise InvalidInput(
                "generate.classes",
                f"unknown GPU class {name!r}; choose from {', '.join(GPU_CLASSES)}",
            )
    delays = shortest_delays_s(topo)
    order = list(range(n))
    random.Random(gen.seed).shuffle(order)
    client_nodes = order[: gen.clients]
    server_nodes = order[gen.clients : gen.clients + gen.servers]
    gpu_of: list[str] = []
    for (name, _), count in zip(gen.classes, class_counts(gen.classes, gen.servers), strict=True):
        gpu_of += [name] * count
    dup = {x for x in topo.nodes if topo.nodes.count(x) > 1}

    def label(node: int) -> str:
        return f"{topo.nodes[node]}#{node}" if topo.nodes[node] in dup else topo.nodes[node]

    servers = []
    for node, gpu_name in zip(server_nodes, gpu_of, strict=True):
        decode, prefill = server_costs(preset, GPU_CLASSES[gpu_name])
        servers.append(
            Server(f"{gpu_name}@{label(node)}", GPU_CLASSES[gpu_name].memory_bytes, decode, prefill)
        )
    clients = [Client(f"client@{label(node)}") for node in client_nodes]
    oh = gen.overhead
    prompt_s = oh.prefill_fixed_s + oh.prefill_per_input_token_s * gen.max_input_tokens
    links = []
    for c, cn in zip(clients, client_nodes, strict=True):
        for s, sn in zip(servers, server_nodes, strict=True):
            rtt = 2 * float(delays[cn, sn])
            if not math.isfinite(rtt):
                raise InvalidInput(
                    "generate.topology",
                    f"{topo.name}: no path from {topo.nodes[cn]} to {topo.nodes[sn]}",
                )
            links.append(Link(c.name, s.name, rtt + oh.per_token_s, rtt + prompt_s))
    spec = ModelSpec(
        preset.name, preset.num_blocks, preset.block_bytes, preset.cache_bytes_per_token
    )
    return Problem(
        spec,
        Workload(gen.max_input_tokens, gen.max_output_tokens),
        tuple(servers),
        tuple(clients),
        tuple(links),
    )
