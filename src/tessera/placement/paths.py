"""Shortest chains over a block placement, by dynamic programming over block boundaries.

A chain is a sequence of servers where each next server holds the block after the previous
server's last one (Lemma 1); server j then processes k blocks, from the previous end to its own
end. The logical graph is acyclic (ends strictly increase), so instead of Dijkstra we compute
`D[e]`, the cheapest way to have processed blocks `[0, e)`, for every end e in increasing order:
`D[e] = min over servers j ending at e, k in 1..m_j of D[e - k] + cost[j, k]`.
Costs are a matrix so that waits (WS-RR) and per-client link costs vectorise. Ties go to the
smallest server index, then the fewest blocks processed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ChainGraph:
    num_blocks: int
    servers: tuple[int, ...]  # problem server index of each row
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    kmax: int
    # one group per distinct end, in increasing order: (end, rows ending there, max blocks in
    # the group, and the boundaries end-1, end-2, ... a hop into the group may start from)
    groups: tuple[tuple[int, npt.NDArray[np.intp], int, npt.NDArray[np.intp]], ...]
    k: FloatArray  # 1..kmax as floats, for cost building
    blocks: npt.NDArray[np.int64]  # blocks held by each row


def build_graph(num_blocks: int, ranges: Sequence[tuple[int, int, int]]) -> ChainGraph:
    """`ranges`: (server index, start, blocks) for each server that holds blocks."""
    rows = sorted(ranges, key=lambda r: r[0])
    servers = tuple(r[0] for r in rows)
    starts = tuple(r[1] for r in rows)
    ends = tuple(r[1] + r[2] for r in rows)
    kmax = max((r[2] for r in rows), default=0)
    by_end: dict[int, list[int]] = {}
    for row, e in enumerate(ends):
        by_end.setdefault(e, []).append(row)
    groups: list[tuple[int, npt.NDArray[np.intp], int, npt.NDArray[np.intp]]] = []
    for e, members in sorted(by_end.items()):
        kg = max(ends[r] - starts[r] for r in members)
        groups.append(
            (e, np.asarray(members, dtype=np.intp), kg, (e - np.arange(1, kg + 1)).astype(np.intp))
        )
    return ChainGraph(
        num_blocks,
        servers,
        starts,
        ends,
        kmax,
        tuple(groups),
        np.arange(1, kmax + 1, dtype=np.float64),
        np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64),
    )


def linear_costs(graph: ChainGraph, per_hop_s: FloatArray, per_block_s: FloatArray) -> FloatArray:
    """cost[row, k-1] = per_hop_s[row] + per_block_s[row] * k, and +inf where k exceeds the range."""
    cost = per_hop_s[:, None] + per_block_s[:, None] * graph.k[None, :]
    cost[graph.k[None, :] > graph.blocks[:, None]] = math.inf
    return cost


def best_chain(graph: ChainGraph, cost: FloatArray) -> tuple[float, list[tuple[int, int]]]:
    """Cheapest chain covering all blocks: (total cost, [(row, blocks processed), ...]).

    Returns (inf, []) when no chain exists (or every chain has an infinite cost).
    """
    n_blocks = graph.num_blocks
    best = np.full(n_blocks + 1, math.inf)
    best[0] = 0.0
    back: dict[int, tuple[int, int]] = {}
    for end, rows, kg, preds in graph.groups:
        cand = cost[rows, :kg] + best[preds][None, :]
        flat = int(np.argmin(cand))
        value = float(cand.flat[flat])
        if value < best[end]:
            r, kk = divmod(flat, kg)
            best[end] = value
            back[end] = (int(rows[r]), kk + 1)
    total = float(best[n_blocks])
    if not math.isfinite(total):
        return math.inf, []
    hops: list[tuple[int, int]] = []
    e = n_blocks
    while e > 0:
        row, k = back[e]
        hops.append((row, k))
        e -= k
    hops.reverse()
    return total, hops
