"""Dedicated chains: the cheapest chain for a group of clients, chosen exactly by dynamic programming.

A server on a chain that holds exactly the blocks it processes needs memory for its blocks and for
the group's sessions on those blocks only: `k_j <= M_j // (s_m + s_c n_g)`. That is the least
memory any plan needs for the chain, so for one group the best chain over a set of servers is the
best plan of that group: a bounded knapsack over blocks, `cost = sum (rtt_j + tau_j k_j)`, with at
most `max_hops` servers. For one client it is the exact optimum of the whole problem.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .paths import FloatArray

CANDIDATES = 96  # servers the DP looks at per chain: the best by amortised per-block time


def is_exhaustive(capacity: Sequence[int]) -> bool:
    """Whether the DP looks at every server that can hold a block (then its chain is the optimum)."""
    return sum(c > 0 for c in capacity) <= CANDIDATES


@dataclass(frozen=True)
class ChainTable:
    """The DP's table: `cost[h, b]` is the cheapest way to cover b blocks with h servers."""

    cost: FloatArray  # one row (h not counted) when no bound on servers binds
    choice: npt.NDArray[np.int32]  # [candidate, h, b]: blocks the candidate takes (0: none)
    candidates: tuple[int, ...]

    def best_s(self, blocks: int) -> float:
        return float(np.min(self.cost[:, blocks])) if self.cost.size else math.inf

    def chain(self, blocks: int) -> tuple[float, list[tuple[int, int]]]:
        """The cheapest (server, blocks) list covering `blocks`; (inf, []) when none exists."""
        if not self.cost.size:
            return math.inf, []
        h = int(np.argmin(self.cost[:, blocks]))
        total = float(self.cost[h, blocks])
        if not math.isfinite(total):
            return math.inf, []
        out: list[tuple[int, int]] = []
        b = blocks
        for i in range(len(self.candidates) - 1, -1, -1):
            k = int(self.choice[i, h, b])
            if k:
                out.append((self.candidates[i], k))
                h, b = (h - 1 if self.cost.shape[0] > 1 else 0), b - k
        return total, out


def chain_table(
    num_blocks: int,
    capacity: Sequence[int],
    per_hop_s: FloatArray,
    per_block_s: FloatArray,
    allowed: Iterable[int],
    max_hops: int,
) -> ChainTable:
    """The DP over `allowed` servers, each taking 1..capacity[j] blocks at
    `per_hop_s[j] + per_block_s[j] * k`, for every block count up to `num_blocks` at once."""
    usable = [j for j in allowed if capacity[j] > 0]
    usable.sort(key=lambda j: (per_block_s[j] + per_hop_s[j] / capacity[j], j))
    cands = usable[:CANDIDATES]
    hops = min(max_hops, len(cands), num_blocks)
    if hops < 1:
        return ChainTable(np.zeros((0, 0)), np.zeros((0, 0, 0), dtype=np.int32), ())
    # Without a binding bound on servers the hop count needs no axis of its own: one row.
    counted = hops < min(len(cands), num_blocks)
    rows = hops + 1 if counted else 1
    dp = np.full((rows, num_blocks + 1), math.inf)
    dp[0, 0] = 0.0
    choice = np.zeros((len(cands), rows, num_blocks + 1), dtype=np.int32)
    for i, j in enumerate(cands):
        new = dp.copy()
        src, dst, pick = (dp[:-1], new[1:], choice[i, 1:]) if counted else (dp, new, choice[i])
        for k in range(1, min(capacity[j], num_blocks) + 1):
            cand = src[:, : num_blocks + 1 - k] + (per_hop_s[j] + per_block_s[j] * k)
            target = dst[:, k:]
            better = cand < target
            target[better] = cand[better]  # a view: writes into `new`
            pick[:, k:][better] = k
        dp = new
    return ChainTable(dp, choice, tuple(cands))


def best_dedicated_chain(
    num_blocks: int,
    capacity: Sequence[int],
    per_hop_s: FloatArray,
    per_block_s: FloatArray,
    allowed: Iterable[int],
    max_hops: int,
) -> tuple[float, list[tuple[int, int]]]:
    """The cheapest (server, blocks) list covering `num_blocks`; (inf, []) when none exists."""
    table = chain_table(num_blocks, capacity, per_hop_s, per_block_s, allowed, max_hops)
    return table.chain(num_blocks)
