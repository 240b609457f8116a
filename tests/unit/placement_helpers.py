"""Small hand-made problems for the placement tests."""

from __future__ import annotations

from tessera.placement import Client, Link, ModelSpec, PrefillCost, Problem, Server, Workload

GB = 10**9


def problem(
    servers: list[tuple[str, int, float]],
    rtts: dict[tuple[str, str], float] | None = None,
    *,
    blocks: int = 10,
    block_bytes: int = GB,
    cache_bytes_per_token: int = 1_000_000,
    concurrent: int | None = 2,
    clients: tuple[str, ...] = ("c0",),
    arrival_rate: float | None = None,
    max_input_tokens: int = 10,
    max_output_tokens: int = 40,
) -> Problem:
    """servers: (name, memory_bytes, decode_s_per_block). Default RTT 0.01 s, prefill 0.02 s."""
    srv = tuple(Server(n, mem, tau, PrefillCost(1e-5, 0.001)) for n, mem, tau in servers)
    rtts = rtts or {}
    links = tuple(Link(c, s.name, rtts.get((c, s.name), 0.01), 0.02) for c in clients for s in srv)
    return Problem(
        ModelSpec("m", blocks, block_bytes, cache_bytes_per_token),
        Workload(max_input_tokens, max_output_tokens, concurrent, arrival_rate),
        srv,
        tuple(Client(c) for c in clients),
        links,
    )
