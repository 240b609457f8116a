"""Problem and plan files <-> frozen values, with errors that name the field.

Input is parsed once here (pydantic, unknown fields rejected); the solvers only see values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera.errors import InvalidInput

from .model import (
    Client,
    Link,
    ModelSpec,
    Placement,
    Plan,
    Predicted,
    PrefillCost,
    Problem,
    Server,
    Workload,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ModelIn(_Strict):
    name: str = Field(min_length=1)
    num_blocks: int = Field(gt=0)
    block_bytes: int = Field(gt=0)
    cache_bytes_per_token: int = Field(gt=0)


class _WorkloadIn(_Strict):
    max_input_tokens: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    concurrent_requests: int | None = Field(default=None, gt=0)
    arrival_rate: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_of(self) -> _WorkloadIn:
        if self.concurrent_requests is None and self.arrival_rate is None:
            raise ValueError("give concurrent_requests, or arrival_rate to choose it automatically")
        return self


class _PrefillIn(_Strict):
    per_token: float = Field(ge=0)
    fixed: float = Field(ge=0)


class _ServerIn(_Strict):
    name: str = Field(min_length=1)
    memory_bytes: int = Field(gt=0)
    decode_s_per_block: float = Field(gt=0)
    prefill_s_per_block: _PrefillIn


class _ClientIn(_Strict):
    name: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)


class _LinkIn(_Strict):
    client: str
    server: str
    rtt_s: float = Field(ge=0)
    prefill_s: float = Field(ge=0)


class _ProblemIn(_Strict):
    model: _ModelIn
    workload: _WorkloadIn
    servers: list[_ServerIn] = Field(min_length=1)
    clients: list[_ClientIn] = Field(min_length=1)
    links: list[_LinkIn]


def _message(err: Any) -> str:
    """pydantic's message without our private class names ("... or instance of _ModelIn")."""
    return str(err["msg"]).split(" or instance of _")[0]


def _field_path(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic location, with list items named where they have a name."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and 0 <= item < len(node):
            name = node[item].get("name") if isinstance(node[item], dict) else None
            parts[-1] = f"{parts[-1]}[{item}]" + (f"({name})" if name else "")
            node = node[item]
            continue
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def _check_names(raw: _ProblemIn) -> None:
    for kind, names in (
        ("servers", [s.name for s in raw.servers]),
        ("clients", [c.name for c in raw.clients]),
    ):
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                raise InvalidInput(
                    f"{kind}[{i}].name", f"duplicate name {n!r}; names must be unique"
                )
            seen.add(n)
    servers = {s.name for s in raw.servers}
    clients = {c.name for c in raw.clients}
    pairs: set[tuple[str, str]] = set()
    for i, lk in enumerate(raw.links):
        if lk.client not in clients:
            raise InvalidInput(f"links[{i}].client", f"unknown client {lk.client!r}")
        if lk.server not in servers:
            raise InvalidInput(f"links[{i}].server", f"unknown server {lk.server!r}")
        if (lk.client, lk.server) in pairs:
            raise InvalidInput(f"links[{i}]", f"duplicate link {lk.client} -> {lk.server}")
        pairs.add((lk.client, lk.server))
    # Hub and spoke: the client relays to every server of its chain, so it needs a link to each.
    for c in raw.clients:
        missing = [s.name for s in raw.servers if (c.name, s.name) not in pairs]
        if len(missing) == len(raw.servers):
            raise InvalidInput("links", f"client {c.name!r} has no link to any server")
        if missing:
            raise InvalidInput(
                "links",
                f"client {c.name!r} has no link to server(s) {', '.join(missing[:5])}",
                hint="every client needs rtt_s and prefill_s to every server (hub and spoke)",
            )


def problem_from_dict(data: Any) -> Problem:
    """Parse a problem mapping (from YAML or JSON). Raises InvalidInput naming the field."""
    if not isinstance(data, Mapping):
        raise InvalidInput(
            "", "a problem must be a mapping with model, workload, servers, clients, links"
        )
    try:
        raw = _ProblemIn.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(_field_path(tuple(err["loc"]), data), _message(err)) from None
    _check_names(raw)
    return Problem(
        model=ModelSpec(
            raw.model.name,
            raw.model.num_blocks,
            raw.model.block_bytes,
            raw.model.cache_bytes_per_token,
        ),
        workload=Workload(
            raw.workload.max_input_tokens,
            raw.workload.max_output_tokens,
            raw.workload.concurrent_requests,
            raw.workload.arrival_rate,
        ),
        servers=tuple(
            Server(
                s.name,
                s.memory_bytes,
                s.decode_s_per_block,
                PrefillCost(s.prefill_s_per_block.per_token, s.prefill_s_per_block.fixed),
            )
            for s in raw.servers
        ),
        clients=tuple(Client(c.name, c.weight) for c in raw.clients),
        links=tuple(Link(lk.client, lk.server, lk.rtt_s, lk.prefill_s) for lk in raw.links),
    )


def problem_to_dict(problem: Problem) -> dict[str, Any]:
    w = problem.workload
    workload: dict[str, Any] = {
        "max_input_tokens": w.max_input_tokens,
        "max_output_tokens": w.max_output_tokens,
    }
    if w.concurrent_requests is not None:
        workload["concurrent_requests"] = w.concurrent_requests
    if w.arrival_rate is not None:
        workload["arrival_rate"] = w.arrival_rate
    m = problem.model
    return {
        "model": {
            "name": m.name,
            "num_blocks": m.num_blocks,
            "block_bytes": m.block_bytes,
            "cache_bytes_per_token": m.cache_bytes_per_token,
        },
        "workload": workload,
        "servers": [
            {
                "name": s.name,
                "memory_bytes": s.memory_bytes,
                "decode_s_per_block": s.decode_s_per_block,
                "prefill_s_per_block": {
                    "per_token": s.prefill_s_per_block.per_token_s,
                    "fixed": s.prefill_s_per_block.fixed_s,
                },
            }
            for s in problem.servers
        ],
        "clients": [{"name": c.name, "weight": c.weight} for c in problem.clients],
        "links": [
            {"client": lk.client, "server": lk.server, "rtt_s": lk.rtt_s, "prefill_s": lk.prefill_s}
            for lk in problem.links
        ],
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"solver": plan.solver, "feasible": plan.feasible}
    if plan.reason is not None:
        out["reason"] = plan.reason
    out["placement"] = [
        {"server": p.server, "start": p.start, "blocks": p.blocks} for p in plan.placement
    ]
    out["routes"] = {c: list(chain) for c, chain in plan.routes.items()}
    if plan.predicted is not None:
        pred: dict[str, Any] = {
            "per_token_s": _finite(plan.predicted.per_token_s),
            "first_token_s": _finite(plan.predicted.first_token_s),
        }
        if plan.predicted.bound_per_token_s is not None:
            pred["bound_per_token_s"] = plan.predicted.bound_per_token_s
        out["predicted"] = pred
    out["stats"] = dict(plan.stats)
    return out


class _PlacementIn(_Strict):
    server: str
    start: int = Field(ge=0)
    blocks: int = Field(gt=0)


class _PredictedIn(_Strict):
    per_token_s: float | None = None
    first_token_s: float | None = None
    bound_per_token_s: float | None = None


class _PlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    solver: str
    feasible: bool
    reason: str | None = None
    placement: list[_PlacementIn] = []
    routes: dict[str, list[str]] = {}
    predicted: _PredictedIn | None = None
    stats: dict[str, Any] = {}


def plan_from_dict(data: Any) -> Plan:
    """Parse a plan file (as written by `tessera plan --format json`)."""
    if not isinstance(data, Mapping):
        raise InvalidInput("", "a plan must be a mapping (the JSON `tessera plan` prints)")
    try:
        raw = _PlanIn.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(_field_path(tuple(err["loc"]), data), _message(err)) from None
    predicted = None
    if raw.predicted is not None:
        predicted = Predicted(
            raw.predicted.per_token_s if raw.predicted.per_token_s is not None else math.inf,
            raw.predicted.first_token_s if raw.predicted.first_token_s is not None else math.inf,
            raw.predicted.bound_per_token_s,
        )
    return Plan(
        solver=raw.solver,
        feasible=raw.feasible,
        placement=tuple(Placement(p.server, p.start, p.blocks) for p in raw.placement),
        routes=MappingProxyType({c: tuple(ch) for c, ch in raw.routes.items()}),
        predicted=predicted,
        stats=MappingProxyType(dict(raw.stats)),
        reason=raw.reason,
    )
