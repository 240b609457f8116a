"""The placement problem and plan as frozen values (see design/placement-contract.md).

Units are in the names: bytes, seconds, tokens. Block indices are 0-based; a server's range is
`[start, start + blocks)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class PrefillCost:
    """Prefill time of ONE block for a prompt of `l` tokens: `per_token_s * l + fixed_s`."""

    per_token_s: float
    fixed_s: float

    def seconds(self, input_tokens: int) -> float:
        return self.per_token_s * input_tokens + self.fixed_s


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_blocks: int
    block_bytes: int
    cache_bytes_per_token: int


@dataclass(frozen=True)
class Workload:
    max_input_tokens: int
    max_output_tokens: int
    concurrent_requests: int | None = None
    arrival_rate: float | None = None  # requests per second; used when concurrency is omitted


@dataclass(frozen=True)
class Server:
    name: str
    memory_bytes: int
    decode_s_per_block: float
    prefill_s_per_block: PrefillCost


@dataclass(frozen=True)
class Client:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Link:
    client: str
    server: str
    rtt_s: float
    prefill_s: float


@dataclass(frozen=True)
class Problem:
    model: ModelSpec
    workload: Workload
    servers: tuple[Server, ...]
    clients: tuple[Client, ...]
    links: tuple[Link, ...]
    # Derived lookups, built once; (client index, server index) -> link.
    _link_index: Mapping[tuple[int, int], Link] = field(init=False, repr=False, compare=False)
    _server_index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s_idx = {s.name: i for i, s in enumerate(self.servers)}
        c_idx = {c.name: i for i, c in enumerate(self.clients)}
        index = {
            (c_idx[lk.client], s_idx[lk.server]): lk
            for lk in self.links
            if lk.client in c_idx and lk.server in s_idx
        }
        object.__setattr__(self, "_link_index", MappingProxyType(index))
        first: dict[str, int] = {}
        for i, s in enumerate(self.servers):
            first.setdefault(s.name, i)  # the first of a repeated name, as a scan would find
        object.__setattr__(self, "_server_index", MappingProxyType(first))

    @property
    def num_blocks(self) -> int:
        return self.model.num_blocks

    @property
    def session_bytes_per_block(self) -> int:
        """s_c: the KV cache of one block for one session at the maximum length."""
        w = self.workload
        return self.model.cache_bytes_per_token * (w.max_input_tokens + w.max_output_tokens)

    def link(self, client: int, server: int) -> Link:
        return self._link_index[(client, server)]

    def server_index(self, name: str) -> int:
        return self._server_index[name]  # KeyError for an unknown server, as before

    def with_concurrency(self, concurrent_requests: int) -> Problem:
        w = self.workload
        workload = Workload(
            w.max_input_tokens, w.max_output_tokens, concurrent_requests, w.arrival_rate
        )
        return Problem(self.model, workload, self.servers, self.clients, self.links)


@dataclass(frozen=True)
class Placement:
    server: str
    start: int
    blocks: int

    @property
    def end(self) -> int:
        return self.start + self.blocks


@dataclass(frozen=True)
class Predicted:
    per_token_s: float
    first_token_s: float
    bound_per_token_s: float | None = None


@dataclass(frozen=True)
class Plan:
    solver: str
    feasible: bool
    placement: tuple[Placement, ...] = ()
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    predicted: Predicted | None = None
    stats: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    reason: str | None = None

    @property
    def statistics(self) -> SolveStats:
        """`stats`, typed (the mapping is what the plan file carries; read this one)."""
        return SolveStats.of(self.stats)


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class SolveStats:
    """What the solvers report about a plan. Every solver fills the first block; the rest is
    `None` where a solver does not apply (`chosen`, `cg_bprr_per_token_s` for auto; `milp_*`,
    `fallback` for the MILP)."""

    concurrent_requests: int | None = None  # the |R| the plan carries (validated at)
    concurrent_requests_source: str = ""
    wall_s: float | None = None
    proven_optimal: bool = False
    servers_used: int | None = None  # GPUs that hold blocks
    max_servers: int | None = None  # the bound it was solved under
    chosen: str | None = None  # auto: which candidate won
    cg_bprr_per_token_s: float | None = None  # auto: its floor on the same pool
    milp_status: str | None = None
    milp_sol_status: str | None = None
    fallback: str | None = None

    @staticmethod
    def of(stats: Mapping[str, Any]) -> SolveStats:
        def opt_int(key: str) -> int | None:
            v = stats.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        def opt_str(key: str) -> str | None:
            v = stats.get(key)
            return v if isinstance(v, str) else None

        return SolveStats(
            concurrent_requests=opt_int("concurrent_requests"),
            concurrent_requests_source=opt_str("concurrent_requests_source") or "",
            wall_s=_opt_float(stats.get("wall_s")),
            proven_optimal=stats.get("proven_optimal") is True,
            servers_used=opt_int("servers_used"),
            max_servers=opt_int("max_servers"),
            chosen=opt_str("chosen"),
            cg_bprr_per_token_s=_opt_float(stats.get("cg_bprr_per_token_s")),
            milp_status=opt_str("milp_status"),
            milp_sol_status=opt_str("milp_sol_status"),
            fallback=opt_str("fallback"),
        )
