"""Seeded generators of problems for tests and benchmarks (pure: pass a random.Random)."""

from __future__ import annotations

import random

from .catalog import GPU_CLASSES, MODELS, server_costs
from .model import Client, Link, ModelSpec, PrefillCost, Problem, Server, Workload


def random_small(
    rng: random.Random, servers: int, blocks: int, clients: int, concurrent_requests: int
) -> Problem:
    """A small heterogeneous problem with realistic proportions (blocks of 1 GB, a d_model of 5000):
    room for 1..blocks blocks per server, mixed speeds and RTTs. Some are infeasible on purpose."""
    cache_per_token = 20_000
    block_bytes = 1_000_000_000
    reserve = 800_000_000  # what PETALS keeps for autograd at this d_model, plus its KV pool margin
    model = ModelSpec("toy", blocks, block_bytes, cache_per_token)
    out = []
    for j in range(servers):
        fit_blocks = rng.randint(1, blocks)
        memory = reserve + fit_blocks * (block_bytes + 90_000_000) + rng.randint(0, 50) * 10_000_000
        out.append(
            Server(
                f"s{j}",
                memory,
                rng.uniform(0.001, 0.02),
                PrefillCost(rng.uniform(0, 1e-4), rng.uniform(0.001, 0.05)),
            )
        )
    cl = [Client(f"c{i}", rng.choice([1.0, 2.0])) for i in range(clients)]
    links = [
        Link(c.name, s.name, rng.uniform(0.001, 0.1), rng.uniform(0.002, 0.2))
        for c in cl
        for s in out
    ]
    return Problem(model, Workload(4, 6, concurrent_requests), tuple(out), tuple(cl), tuple(links))


def random_pool(
    rng: random.Random,
    servers: int,
    model: str = "llama-70b",
    concurrent_requests: int = 32,
    clients: int = 2,
) -> Problem:
    """A pool of current cards with random per-client RTTs (1-100 ms), for benchmarks at scale."""
    preset = MODELS[model]
    classes = ["h100-80gb", "a100-80gb", "l40s", "l4", "t4"]
    out = []
    for j in range(servers):
        gpu = GPU_CLASSES[rng.choice(classes)]
        decode, prefill = server_costs(preset, gpu)
        out.append(Server(f"{gpu.name}-{j}", gpu.memory_bytes, decode, prefill))
    cl = [Client(f"c{i}") for i in range(clients)]
    links = []
    for c in cl:
        for s in out:
            rtt = rng.uniform(0.001, 0.1)
            links.append(Link(c.name, s.name, rtt + 0.002, rtt + 0.005))
    spec = ModelSpec(
        preset.name, preset.num_blocks, preset.block_bytes, preset.cache_bytes_per_token
    )
    return Problem(
        spec, Workload(2048, 512, concurrent_requests), tuple(out), tuple(cl), tuple(links)
    )
