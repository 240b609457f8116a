"""When a server is a full replica: it holds every block with room for its share."""

from __future__ import annotations

import pytest

from tessera.placement import Placement, Plan, Problem
from tessera.placement.replicas import (
    full_replicas,
    pp_layer_partition,
    replica_kv_pages,
    replica_sessions,
    replica_share,
    split_concurrency,
)

from .placement_helpers import problem

MB = 1_000_000


def _problem(big_bytes: int, concurrent: int = 8) -> Problem:
    # A session of 1000 tokens (600 in, 400 out): 1 MB of cache per block.
    servers = [("big", big_bytes, 0.001), ("a", 600 * MB, 0.001), ("b", 600 * MB, 0.001)]
    return problem(
        servers,
        block_bytes=10 * MB,
        cache_bytes_per_token=1000,
        concurrent=concurrent,
        max_input_tokens=600,
        max_output_tokens=400,
    )


PLAN = Plan("t", True, (Placement("big", 0, 10), Placement("a", 0, 5), Placement("b", 5, 5)))


def test_sessions_beside_the_weights() -> None:
    assert replica_sessions(_problem(100 * MB + 40 * MB), "big") == 4
    assert replica_sessions(_problem(90 * MB), "big") == 0  # the weights do not fit
    assert replica_kv_pages(_problem(100 * MB + 16_000 * 5), "big", 16) == 5


def test_a_replica_needs_room_for_its_share() -> None:
    # 8 requests over two ways (the replica, the split chains): a share of 4 sessions.
    assert replica_share(_problem(0), PLAN) == 4
    assert full_replicas(_problem(100 * MB + 40 * MB), PLAN) == ("big",)
    assert full_replicas(_problem(100 * MB + 39 * MB), PLAN) == ()


def test_only_whole_range_servers_are_replicas() -> None:
    plan = Plan("t", True, (Placement("a", 0, 5), Placement("b", 5, 5)))
    assert full_replicas(_problem(10**12), plan) == ()
    assert replica_share(_problem(0, concurrent=3), plan) == 3


def test_a_chain_as_a_vllm_pipeline_partition() -> None:
    split = Plan("t", True, (Placement("a", 0, 6), Placement("b", 4, 6)))  # overlap 4..6
    assert pp_layer_partition(_problem(0), split, ("a", "b")) == "6,4"
    assert pp_layer_partition(_problem(0), PLAN, ("big",)) == "10"
    with pytest.raises(ValueError):
        pp_layer_partition(_problem(0), split, ("b", "a"))
    with pytest.raises(ValueError):
        pp_layer_partition(_problem(0), split, ("a",))


def test_the_split_chains_carry_what_the_replicas_do_not() -> None:
    assert split_concurrency(8, 1) == 4
    assert split_concurrency(32, 1) == 16
    assert split_concurrency(9, 2) == 3  # shares of 3, 3, and the rest
    assert split_concurrency(1, 1) == 1
