"""When a server is a full replica: it holds every block with room for its share."""

from __future__ import annotations

from tessera.placement import (
    Client,
    Link,
    ModelSpec,
    Placement,
    Plan,
    PrefillCost,
    Problem,
    Server,
    Workload,
)
from tessera.placement.replicas import (
    full_replicas,
    replica_kv_pages,
    replica_sessions,
    replica_share,
)

MB = 1_000_000


def _problem(big_bytes: int, concurrent: int = 8) -> Problem:
    cost = PrefillCost(0.0, 0.0)
    servers = (
        Server("big", big_bytes, 0.001, cost),
        Server("a", 600 * MB, 0.001, cost),
        Server("b", 600 * MB, 0.001, cost),
    )
    return Problem(
        ModelSpec("m", 10, 10 * MB, 1000),  # a session of 1000 tokens: 1 MB per block
        Workload(600, 400, concurrent),
        servers,
        (Client("c"),),
        tuple(Link("c", s.name, 0.001, 0.001) for s in servers),
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
