"""The dedicated-chain DP against enumeration of every chain."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.placement.chains import best_dedicated_chain


def _enumerate(blocks: int, cap: list[int], hop: list[float], per: list[float], hops: int) -> float:
    best = math.inf
    n = len(cap)
    for ks in itertools.product(*[range(c + 1) for c in cap]):
        used = [j for j in range(n) if ks[j] > 0]
        if sum(ks) == blocks and len(used) <= hops:
            best = min(best, sum(hop[j] + per[j] * ks[j] for j in used))
    return best


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(
        st.tuples(st.integers(0, 4), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=4
    ),
    st.integers(1, 4),
)
def test_the_dp_finds_the_cheapest_chain_within_the_hop_limit(blocks, servers, hops) -> None:  # type: ignore[no-untyped-def]
    cap = [c for c, _, _ in servers]
    hop = [h for _, h, _ in servers]
    per = [p for _, _, p in servers]
    total, chain = best_dedicated_chain(
        blocks, cap, np.array(hop), np.array(per), range(len(cap)), hops
    )
    expected = _enumerate(blocks, cap, hop, per, hops)
    if math.isinf(expected):
        assert chain == [] and math.isinf(total)
        return
    assert math.isclose(total, expected, rel_tol=1e-9, abs_tol=1e-12)
    assert sum(k for _, k in chain) == blocks and len(chain) <= hops
    assert len({j for j, _ in chain}) == len(chain)
    assert all(1 <= k <= cap[j] for j, k in chain)
    assert math.isclose(
        sum(hop[j] + per[j] * k for j, k in chain), total, rel_tol=1e-9, abs_tol=1e-12
    )
