"""Requests arriving over time: a seeded Poisson process or rows of a trace (pure values)."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tessera.errors import InvalidInput
from tessera.placement import Problem


@dataclass(frozen=True)
class Request:
    arrival_s: float
    client: int  # index into problem.clients
    input_tokens: int
    output_tokens: int


def poisson(
    problem: Problem,
    rate_per_s: float,
    count: int,
    rng: random.Random,
    output_tokens: int | None = None,
    input_tokens: int | None = None,
) -> tuple[Request, ...]:
    """`count` requests with exponential gaps of mean 1/rate, the first at t=0 (as the paper's
    simulator); each from a client drawn by weight; prompt and output at the workload maxima
    unless given."""
    if rate_per_s <= 0 or count < 0:
        raise InvalidInput("arrivals", "rate must be positive and count non-negative")
    w = problem.workload
    l_in = w.max_input_tokens if input_tokens is None else input_tokens
    l_out = w.max_output_tokens if output_tokens is None else output_tokens
    cum = list(itertools.accumulate(c.weight for c in problem.clients))
    total = cum[-1]
    single = len(cum) == 1
    out: list[Request] = []
    t = 0.0
    for i in range(count):
        if i:
            t += rng.expovariate(rate_per_s)
        client = 0 if single else min(bisect.bisect_right(cum, rng.random() * total), len(cum) - 1)
        out.append(Request(t, client, l_in, l_out))
    return tuple(out)


TRACE_COLUMNS = ("arrival_s", "client", "input_tokens", "output_tokens")


def from_trace(problem: Problem, rows: Iterable[Mapping[str, str]]) -> tuple[Request, ...]:
    """Requests from trace rows (strings, as read from a CSV); `client` is a name or an index.

    Rows are sorted by arrival time (stable). Errors name the row (1-based, after the header)."""
    names = {c.name: i for i, c in enumerate(problem.clients)}
    w = problem.workload
    out: list[Request] = []
    for n, row in enumerate(rows, start=1):
        where = f"arrivals.trace row {n}"
        missing = [c for c in TRACE_COLUMNS if row.get(c) in (None, "")]
        if missing:
            raise InvalidInput(where, f"missing column(s) {', '.join(missing)}")
        try:
            arrival = float(row["arrival_s"])
            l_in, l_out = int(row["input_tokens"]), int(row["output_tokens"])
        except ValueError as exc:
            raise InvalidInput(where, f"not a number: {exc}") from None
        client_key = row["client"].strip()
        if client_key in names:
            client = names[client_key]
        elif client_key.isdigit() and int(client_key) < len(problem.clients):
            client = int(client_key)
        else:
            raise InvalidInput(where, f"unknown client {client_key!r}")
        if not arrival >= 0:
            raise InvalidInput(where, "arrival_s must be a non-negative number of seconds")
        if not 0 < l_in <= w.max_input_tokens:
            raise InvalidInput(where, f"input_tokens must be in 1..{w.max_input_tokens}")
        if not 0 < l_out <= w.max_output_tokens:
            raise InvalidInput(
                where,
                f"output_tokens must be in 1..{w.max_output_tokens}",
                hint="KV slots are sized for the workload maxima; raise max_output_tokens",
            )
        out.append(Request(arrival, client, l_in, l_out))
    out.sort(key=lambda r: r.arrival_s)
    return tuple(out)


def mean_rate_per_s(requests: Sequence[Request]) -> float | None:
    """Arrivals per second over the trace's span (None if it has fewer than two requests)."""
    if len(requests) < 2:
        return None
    span = requests[-1].arrival_s - requests[0].arrival_s
    return (len(requests) - 1) / span if span > 0 else None
