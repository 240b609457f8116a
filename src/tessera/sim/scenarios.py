"""Scenario files (placement-contract.md, section Scenario): parsed once, then built into values.

Parsing is pure (pydantic, unknown fields rejected, errors name the field). Files the scenario
refers to (a problem, a topology, a trace) are read by the caller through a `Files` object, so
this module does no I/O itself.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera.errors import InvalidInput
from tessera.placement import Problem, choose_concurrency, problem_from_dict

from . import arrivals as arr
from .policies import POLICIES
from .topology import Generator, Overhead, generate, topology_from_dict

SWEEPS = ("servers", "fraction", "rate", "output_tokens")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OverheadIn(_Strict):
    per_token_s: float = Field(default=0.1, ge=0)
    prefill_fixed_s: float = Field(default=0.067, ge=0)
    prefill_per_input_token_s: float = Field(default=0.0007049, ge=0)


class WorkloadIn(_Strict):
    max_input_tokens: int = Field(default=20, gt=0)
    max_output_tokens: int = Field(default=128, gt=0)


class GenerateIn(_Strict):
    topology: str = Field(min_length=1)
    servers: int | None = Field(default=None, gt=0)
    server_fraction: float | None = Field(default=None, gt=0, le=1)
    classes: dict[str, float] = Field(
        default_factory=lambda: {"a100-80gb": 0.2, "mig-1g.10gb": 0.8}, min_length=1
    )
    clients: int = Field(default=1, gt=0)
    overhead: OverheadIn = OverheadIn()
    model: str = "bloom-176b"
    workload: WorkloadIn = WorkloadIn()
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> GenerateIn:
        if (self.servers is None) == (self.server_fraction is None):
            raise ValueError("give exactly one of servers or server_fraction")
        if any(v < 0 for v in self.classes.values()) or not math.isclose(
            sum(self.classes.values()), 1.0, abs_tol=1e-6
        ):
            raise ValueError("classes: shares must be non-negative and sum to 1")
        return self


class ArrivalsIn(_Strict):
    rate: float | None = Field(default=None, gt=0)
    count: int | None = Field(default=None, gt=0)
    seed: int = 0
    output_tokens: int | None = Field(default=None, gt=0)
    trace: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ArrivalsIn:
        if self.trace is not None:
            if self.rate is not None or self.count is not None or self.output_tokens is not None:
                raise ValueError("a trace gives every request: drop rate, count and output_tokens")
        elif self.rate is None or self.count is None:
            raise ValueError("give rate and count (a Poisson process), or trace: FILE.csv")
        return self


class ScenarioIn(_Strict):
    problem: str | dict[str, Any] | None = None
    generate: GenerateIn | None = None
    arrivals: ArrivalsIn
    policies: list[str] = Field(default_factory=lambda: ["cg-bprr", "petals"], min_length=1)
    concurrent_requests: Literal["auto"] | int | None = None
    request_overhead_s: float | dict[str, float] = 0.0
    petals_seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ScenarioIn:
        if (self.problem is None) == (self.generate is None):
            raise ValueError("give exactly one of problem or generate")
        for p in self.policies:
            if p not in POLICIES:
                raise ValueError(f"unknown policy {p!r}; choose from {', '.join(POLICIES)}")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError("policies: each policy once")
        if isinstance(self.concurrent_requests, int) and self.concurrent_requests <= 0:
            raise ValueError("concurrent_requests: a positive integer or auto")
        over = self.request_overhead_s
        values = over.values() if isinstance(over, dict) else [over]
        if any(not (v >= 0 and math.isfinite(v)) for v in values):
            raise ValueError("request_overhead_s: non-negative seconds")
        if isinstance(over, dict):
            unknown = set(over) - set(POLICIES)
            if unknown:
                raise ValueError(f"request_overhead_s: unknown policy {sorted(unknown)[0]!r}")
        return self


def parse_scenario(data: Any) -> ScenarioIn:
    if not isinstance(data, Mapping):
        raise InvalidInput("", "a scenario must be a mapping (see placement-contract.md)")
    try:
        return ScenarioIn.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidInput(loc, msg) from None


class Files(Protocol):
    """What a scenario refers to, read by the caller (the CLI reads files next to the scenario)."""

    def problem(self, ref: str) -> Any: ...
    def topology(self, ref: str) -> Any: ...
    def trace(self, ref: str) -> list[dict[str, str]]: ...


@dataclass(frozen=True)
class Scenario:
    problem: Problem
    requests: tuple[arr.Request, ...]
    policies: tuple[str, ...]
    concurrent_requests: int
    concurrency_source: str
    overhead_s: Mapping[str, float]  # per policy
    petals_seed: int


def parse_sweep(text: str) -> tuple[str, tuple[float, ...]]:
    """`servers=6,10,15` -> ("servers", (6, 10, 15))."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or name not in SWEEPS:
        raise InvalidInput(
            "--sweep", f"write PARAM=V1,V2,... with PARAM one of {', '.join(SWEEPS)}"
        )
    try:
        out = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError:
        raise InvalidInput("--sweep", f"values must be numbers: {values!r}") from None
    if not out or any(not (v > 0 and math.isfinite(v)) for v in out):
        raise InvalidInput("--sweep", "give at least one positive value")
    if name in ("servers", "output_tokens") and any(v != int(v) for v in out):
        raise InvalidInput("--sweep", f"{name} takes whole numbers")
    if name == "fraction" and any(v > 1 for v in out):
        raise InvalidInput("--sweep", "fraction is a share of servers in 0..1")
    return name, out


def _swept_generate(g: GenerateIn, param: str, value: float) -> GenerateIn:
    if param == "servers":
        return g.model_copy(update={"servers": int(value), "server_fraction": None})
    if param == "fraction":
        names = list(g.classes)
        if len(names) < 2:
            raise InvalidInput(
                "--sweep", "fraction needs at least two GPU classes in generate.classes"
            )
        rest = sum(g.classes[n] for n in names[1:])
        shares = {names[0]: value}
        for n in names[1:]:
            shares[n] = (1 - value) * (g.classes[n] / rest if rest > 0 else 1 / (len(names) - 1))
        return g.model_copy(update={"classes": shares})
    if param == "output_tokens":
        return g.model_copy(
            update={"workload": g.workload.model_copy(update={"max_output_tokens": int(value)})}
        )
    return g


def _problem(spec: ScenarioIn, files: Files, sweep: tuple[str, float] | None) -> Problem:
    param, value = sweep if sweep is not None else ("", 0.0)
    if spec.generate is not None:
        g = _swept_generate(spec.generate, param, value) if sweep else spec.generate
        topo = topology_from_dict(files.topology(g.topology))
        servers = g.servers or max(1, math.floor(g.server_fraction * len(topo.nodes) + 0.5))  # type: ignore[operator]
        o = g.overhead
        return generate(
            Generator(
                topo,
                servers,
                tuple(g.classes.items()),
                g.clients,
                Overhead(o.per_token_s, o.prefill_fixed_s, o.prefill_per_input_token_s),
                g.model,
                g.workload.max_input_tokens,
                g.workload.max_output_tokens,
                g.seed,
            )
        )
    raw = spec.problem if isinstance(spec.problem, dict) else files.problem(str(spec.problem))
    problem = problem_from_dict(raw)
    if param == "fraction":
        raise InvalidInput("--sweep", "fraction needs a `generate:` scenario (GPU class shares)")
    if param == "servers":  # a fixed problem: keep its first N servers
        keep = problem.servers[: int(value)]
        names = {s.name for s in keep}
        links = tuple(lk for lk in problem.links if lk.server in names)
        problem = dataclasses.replace(problem, servers=keep, links=links)
    if param == "output_tokens":
        w = dataclasses.replace(problem.workload, max_output_tokens=int(value))
        problem = dataclasses.replace(problem, workload=w)
    return problem


def build_scenario(
    spec: ScenarioIn, files: Files, sweep: tuple[str, float] | None = None
) -> Scenario:
    """The problem, arrivals and design |R| of a scenario, with one sweep value applied."""
    problem = _problem(spec, files, sweep)
    a = spec.arrivals
    if sweep is not None and sweep[0] in ("rate", "output_tokens") and a.trace is not None:
        raise InvalidInput("--sweep", f"{sweep[0]} cannot be swept over a trace")
    if a.trace is not None:
        requests = arr.from_trace(problem, files.trace(a.trace))
        rate = arr.mean_rate_per_s(requests)
    else:
        rate = sweep[1] if sweep is not None and sweep[0] == "rate" else a.rate
        out_tokens = (
            int(sweep[1]) if sweep is not None and sweep[0] == "output_tokens" else a.output_tokens
        )
        if out_tokens is not None and out_tokens > problem.workload.max_output_tokens:
            raise InvalidInput(
                "arrivals.output_tokens",
                f"{out_tokens} exceeds the workload's max_output_tokens "
                f"({problem.workload.max_output_tokens}) that KV slots are sized for",
            )
        requests = arr.poisson(
            problem, rate or 0.0, a.count or 0, random.Random(a.seed), out_tokens
        )
    r, source = _concurrency(spec, problem, rate)
    over = spec.request_overhead_s
    overhead = {p: (over.get(p, 0.0) if isinstance(over, dict) else over) for p in spec.policies}
    return Scenario(
        problem.with_concurrency(r),
        requests,
        tuple(spec.policies),
        r,
        source,
        MappingProxyType(overhead),
        spec.petals_seed,
    )


def _concurrency(spec: ScenarioIn, problem: Problem, rate: float | None) -> tuple[int, str]:
    given = spec.concurrent_requests
    if isinstance(given, int):
        return given, "given"
    if given is None and problem.workload.concurrent_requests is not None:
        return problem.workload.concurrent_requests, "given (problem)"
    if rate is None:
        raise InvalidInput(
            "concurrent_requests", "auto needs an arrival rate; give a number for a short trace"
        )
    w = dataclasses.replace(problem.workload, concurrent_requests=None, arrival_rate=rate)
    return choose_concurrency(dataclasses.replace(problem, workload=w))
