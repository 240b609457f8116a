"""Dedicated chains: the cheapest chain for a group of clients, chosen exactly by dynamic programming.

A server on a chain that holds exactly the blocks it processes needs memory for its blocks and for
the group's sessions on those blocks only: `k_j <= M_j // (s_m + s_c n_g)`. That is the least
memory any plan needs for the chain, so for one group the best chain over a set of servers is the
best plan of that group: a bounded knapsack over blocks, `cost = sum (rtt_j + tau_j k_j)`, with at
most `max_hops` servers. For one client it is the exact optimum of the whole problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .paths import FloatArray

CANDIDATES = 96  # servers the DP looks at per chain: the best by amortised per-block time


def is_exhaustive(capacity: Sequence[int]) -> bool:
    """Whether the DP looks at every server that can hold a block (then its chain is the optimum)."""
    return sum(c > 0 for c in capacity) <= CANDIDATES


def best_dedicated_chain(
    num_blocks: int,
    capacity: Sequence[int],
    per_hop_s: FloatArray,
    per_block_s: FloatArray,
    allowed: Sequence[int],
    max_hops: int,
) -> tuple[float, list[tuple[int, int]]]:
    """The cheapest (server, blocks) list covering `num_blocks` from `allowed` servers, each taking
    1..capacity[j] blocks at `per_hop_s[j] + per_block_s[j] * k`; (inf, []) when none exists."""
    usable = [j for j in allowed if capacity[j] > 0]
    usable.sort(key=lambda j: (per_block_s[j] + per_hop_s[j] / capacity[j], j))
    cands = usable[:CANDIDATES]
    hops = min(max_hops, len(cands), num_blocks)
    if hops < 1:
        return math.inf, []
    dp = np.full((hops + 1, num_blocks + 1), math.inf)
    dp[0, 0] = 0.0
    choice = np.zeros((len(cands), hops + 1, num_blocks + 1), dtype=np.int32)
    for i, j in enumerate(cands):
        new = dp.copy()
        for k in range(1, min(capacity[j], num_blocks) + 1):
            cand = dp[:-1, : num_blocks + 1 - k] + (per_hop_s[j] + per_block_s[j] * k)
            target = new[1:, k:]
            better = cand < target
            target[better] = cand[better]  # a view: writes into `new`
            choice[i, 1:, k:][better] = k
        dp = new
    h = int(np.argmin(dp[:, num_blocks]))
    total = float(dp[h, num_blocks])
    if not math.isfinite(total):
        return math.inf, []
    out: list[tuple[int, int]] = []
    b = num_blocks
    for i in range(len(cands) - 1, -1, -1):
        k = int(choice[i, h, b])
        if k:
            out.append((cands[i], k))
            h, b = h - 1, b - k
    return total, out
