"""Summary figures of a simulated run, with the keys of the contract (placement-contract.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .engine import Served


@dataclass(frozen=True)
class Summary:
    per_token_s: float  # mean over requests of (completion - arrival) / output tokens
    first_token_s: float  # mean of first token - arrival
    remaining_token_s: float  # mean of (completion - first token) / (output tokens - 1)
    p50_per_token_s: float
    p95_per_token_s: float
    p99_per_token_s: float
    mean_wait_s: float  # mean of start - arrival (waiting for KV slots, after any backoff)
    completed: int
    concurrent_requests: int
    simulated_s: float  # the last completion

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in asdict(self).items()
        }


def per_token_times(served: Sequence[Served]) -> np.ndarray:
    done = [s for s in served if s.chain]
    return np.array(
        [(s.completion_s - s.request.arrival_s) / s.request.output_tokens for s in done]
    )


def summarise(served: Sequence[Served], concurrent_requests: int) -> Summary:
    done = [s for s in served if s.chain]
    if not done:
        nan = math.nan
        return Summary(nan, nan, nan, nan, nan, nan, nan, 0, concurrent_requests, 0.0)
    per_token = per_token_times(done)
    first = np.array([s.first_token_s - s.request.arrival_s for s in done])
    rest = [
        (s.completion_s - s.first_token_s) / (s.request.output_tokens - 1)
        for s in done
        if s.request.output_tokens > 1
    ]
    waits = np.array([s.wait_s for s in done])
    p50, p95, p99 = (float(x) for x in np.percentile(per_token, [50, 95, 99]))
    return Summary(
        per_token_s=float(per_token.mean()),
        first_token_s=float(first.mean()),
        remaining_token_s=float(np.mean(rest)) if rest else math.nan,
        p50_per_token_s=p50,
        p95_per_token_s=p95,
        p99_per_token_s=p99,
        mean_wait_s=float(waits.mean()),
        completed=len(done),
        concurrent_requests=concurrent_requests,
        simulated_s=max(s.completion_s for s in done),
    )
