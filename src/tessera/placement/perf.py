"""The performance model of the paper (section 2): time and memory of a chain.

Per-token decode time of a chain for client c: sum over its servers j of
`rtt_s(c, j) + decode_s_per_block(j) * k_j`, where k_j is the number of blocks j processes.
First-token time: sum of `prefill_s(c, j) + k_j * prefill_s_per_block(j)(max_input_tokens)`.
Memory of server j: `block_bytes * m_j + s_c * (block-sessions it holds)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .model import Placement, Predicted, Problem


def blocks_processed(ranges: Sequence[tuple[int, int]]) -> list[int]:
    """k_j for each hop of a chain given each server's (start, end): from the previous end to its end."""
    out: list[int] = []
    prev_end = 0
    for _start, end in ranges:
        out.append(end - prev_end)
        prev_end = end
    return out


def chain_hops(
    problem: Problem, placement: Mapping[str, Placement], chain: Sequence[str]
) -> list[tuple[int, int]]:
    """(server index, blocks processed) for each hop of a named chain."""
    ranges = [(placement[name].start, placement[name].end) for name in chain]
    return [
        (problem.server_index(n), k) for n, k in zip(chain, blocks_processed(ranges), strict=True)
    ]


def decode_s_per_token(problem: Problem, client: int, hops: Sequence[tuple[int, int]]) -> float:
    return sum(
        problem.link(client, j).rtt_s + problem.servers[j].decode_s_per_block * k for j, k in hops
    )


def first_token_s(
    problem: Problem, client: int, hops: Sequence[tuple[int, int]], input_tokens: int | None = None
) -> float:
    l_in = problem.workload.max_input_tokens if input_tokens is None else input_tokens
    return sum(
        problem.link(client, j).prefill_s + problem.servers[j].prefill_s_per_block.seconds(l_in) * k
        for j, k in hops
    )


def request_s(
    problem: Problem,
    client: int,
    hops: Sequence[tuple[int, int]],
    input_tokens: int,
    output_tokens: int,
) -> float:
    """Service time of one request: first token, then one decode step per further token (section 2.1)."""
    return first_token_s(problem, client, hops, input_tokens) + (
        output_tokens - 1
    ) * decode_s_per_token(problem, client, hops)


def server_slots(problem: Problem, server: int, blocks: int) -> int:
    """Block-session KV slots that fit beside the weights of `blocks` blocks (M~_j in the paper)."""
    free = problem.servers[server].memory_bytes - problem.model.block_bytes * blocks
    return max(free // problem.session_bytes_per_block, 0) if free >= 0 else -1


def memory_bytes(problem: Problem, blocks: int, block_sessions: int) -> int:
    """Memory of a server holding `blocks` blocks and `block_sessions` (block, session) KV caches."""
    return problem.model.block_bytes * blocks + problem.session_bytes_per_block * block_sessions


def requests_per_client(problem: Problem, concurrent_requests: int) -> list[int]:
    """Split |R| over clients by weight (largest remainder; ties to the smaller index)."""
    total = sum(c.weight for c in problem.clients)
    shares = [concurrent_requests * c.weight / total for c in problem.clients]
    counts = [int(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: concurrent_requests - sum(counts)]:
        counts[i] += 1
    return counts


def weighted_mean(problem: Problem, values: Sequence[float]) -> float:
    total = sum(c.weight for c in problem.clients)
    return sum(c.weight * v for c, v in zip(problem.clients, values, strict=True)) / total


def farthest_rtt(problem: Problem, server: int) -> float:
    """t*_j: the largest per-token RTT of any client to server j."""
    return max(problem.link(c, server).rtt_s for c in range(len(problem.clients)))


def predicted_for(
    problem: Problem,
    hops_all: Sequence[Sequence[tuple[int, int]]],
    bound: float | None,
    input_tokens: int | None = None,
) -> Predicted:
    """Client-weighted per-token and first-token time of one chain per client (inf: no chain);
    the first token after a prompt of `input_tokens` (default: the workload's maximum)."""
    per_token = [
        decode_s_per_token(problem, c, h) if h else math.inf for c, h in enumerate(hops_all)
    ]
    first = [
        first_token_s(problem, c, h, input_tokens) if h else math.inf
        for c, h in enumerate(hops_all)
    ]
    return Predicted(weighted_mean(problem, per_token), weighted_mean(problem, first), bound)


def transfer_s(
    tokens: int, hidden_size: int, bytes_per_element: float, bandwidth_bytes_per_s: float | None
) -> float:
    """Seconds to move `tokens` tokens' hidden states over a link of that bandwidth, at
    `bytes_per_element` on the wire (`placement.wire`); 0 with no bandwidth given, where the
    link's `rtt_s` and `prefill_s` are all it costs."""
    if bandwidth_bytes_per_s is None:
        return 0.0
    return tokens * hidden_size * bytes_per_element / bandwidth_bytes_per_s
