"""Stragglers: each stage's step time learned online, an adaptive deadline per step, and how
often to hedge a first token (pure: values in, values out; no clock, no I/O, no randomness).

Per stage, the router keeps the last `WINDOW` hop times of decode steps (one token) and of
prefill steps (seconds per token). A hop's deadline is `multiple` times the window's 90th
percentile (per token for a prefill, times its tokens), never under `floor_s`: normal jitter and
continuous batching (a decode that shares a forward with a prefill chunk) stay well inside it,
while a frozen stage overruns it within about a second instead of the fixed step timeout.
A sliding window rather than an EWMA or a P-square estimator: it forgets a past load regime in
`WINDOW` steps, its quantile is exact, and 64 floats cost nothing to sort. A hop that overran is
recorded at its deadline (censored), so that one freeze does not inflate later deadlines.

First-token hedging follows the stragglers seed (wait for the fastest k of n, and adapt k to the
measured spread of response times): with n = 2 chains and k = 1, what adapts is the share of
requests that are hedged. It grows with the spread of the stages' step times (p90 / p50) and is
capped by a budget: the stage work of hedges that lost stays below `budget` times all the other
stage work. Work is counted in block-tokens (tokens times blocks a hop ran them through), and
both sums decay as work is done (`HORIZON_BLOCK_TOKENS`), so that the bound holds over recent
work too: a long quiet past does not fund a burst of hedges.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tessera.api.launch import RouterLaunch

WINDOW = 64  # recent hops per stage and kind
MIN_SAMPLES = 8  # fewer: no adaptive deadline yet (the fixed step timeout applies)
QUANTILE = 0.9
# No prefill sample yet: a prefill of T tokens gets the decode deadline times (1 + T / this).
PREFILL_TOKENS_PER_DECODE = 8.0
# Spread (p90 / p50 of a stage's decode hops) at which hedging starts, and where it is total.
SPREAD_LOW = 1.5
SPREAD_HIGH = 4.0
# The budget's memory: about a hundred short requests' work on the packaged model.
HORIZON_BLOCK_TOKENS = 100_000.0


@dataclass(frozen=True)
class StragglerPolicy:
    # Defaults: `tessera router`'s (tessera.api.launch). floor_s: no hop deadline below this (a
    # batched prefill chunk stays inside); multiple: times the p90 of the stage's recent hops;
    # hedge_budget: hedge work that lost, as a share of all other stage work.
    floor_s: float = RouterLaunch.straggler_floor_s
    multiple: float = RouterLaunch.straggler_multiple
    hedge_budget: float = RouterLaunch.hedge_budget
    hedge_first_token: bool = True  # hedge first tokens at all (when spread and budget allow)


def _quantile(samples: deque[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


class StageTimes:
    """One stage's recent hop times: decode seconds and prefill seconds per token."""

    def __init__(self) -> None:
        self.decode_s: deque[float] = deque(maxlen=WINDOW)
        self.prefill_s_per_token: deque[float] = deque(maxlen=WINDOW)

    def record(self, tokens: int, seconds: float) -> None:
        if tokens <= 1:
            self.decode_s.append(seconds)
        else:
            self.prefill_s_per_token.append(seconds / tokens)

    def deadline_s(self, tokens: int, policy: StragglerPolicy) -> float | None:
        """How long a hop of `tokens` tokens may take before it counts as straggling; None
        while too few hops have been seen (then only the fixed step timeout applies)."""
        if len(self.decode_s) < MIN_SAMPLES:
            return None
        decode = _quantile(self.decode_s, QUANTILE)
        if tokens <= 1:
            expected = decode
        elif len(self.prefill_s_per_token) >= MIN_SAMPLES // 2:
            expected = max(decode, _quantile(self.prefill_s_per_token, QUANTILE) * tokens)
        else:
            expected = decode * (1.0 + tokens / PREFILL_TOKENS_PER_DECODE)
        return max(policy.floor_s, policy.multiple * expected)

    def spread(self) -> float:
        """p90 / p50 of recent decode hops (1.0: no spread or too few samples)."""
        if len(self.decode_s) < MIN_SAMPLES:
            return 1.0
        median = _quantile(self.decode_s, 0.5)
        return _quantile(self.decode_s, QUANTILE) / median if median > 0 else 1.0


def hedge_share(spread: float) -> float:
    """The share of first tokens worth hedging at this spread of step times (0 to 1)."""
    if not math.isfinite(spread):
        return 1.0
    return min(max((spread - SPREAD_LOW) / (SPREAD_HIGH - SPREAD_LOW), 0.0), 1.0)


@dataclass
class HedgeBudget:
    """Stage work so far (block-tokens) and the hedging credit of the adaptive share."""

    work: float = 0.0  # all stage work, winners and losers
    extra: float = 0.0  # work of hedges that lost (cancelled): the price of hedging
    credit: float = 0.0  # accumulated hedge share: a request is hedged when it reaches 1

    def add_work(self, block_tokens: float) -> None:
        keep = math.exp(-block_tokens / HORIZON_BLOCK_TOKENS)
        self.work = self.work * keep + block_tokens
        self.extra *= keep

    def add_extra(self, block_tokens: float) -> None:
        self.extra += block_tokens

    def extra_share(self) -> float:
        """Extra work as a share of the useful work (all work minus the extra)."""
        useful = self.work - self.extra
        return self.extra / useful if useful > 0 else 0.0

    def should_hedge(self, share: float, cost: float, policy: StragglerPolicy) -> bool:
        """Hedge this request? `share`: the adaptive share (`hedge_share`); `cost`: the work a
        losing hedge would add. Deterministic: every 1/share-th request, budget permitting."""
        if not policy.hedge_first_token or share <= 0.0:
            return False
        self.credit = min(self.credit + share, 1.0)
        useful = self.work - self.extra
        if self.credit < 1.0 or self.extra + cost > policy.hedge_budget * useful:
            return False
        self.credit -= 1.0
        return True


class StragglerBook:
    """The router's straggler state: each stage's recent hop times and the hedging budget, with
    the metrics hooks told of every piece of stage work and every hedge."""

    def __init__(
        self,
        policy: StragglerPolicy,
        *,
        on_hedge: Callable[[str, str, float], None] | None = None,
        on_work: Callable[[float], None] | None = None,
    ) -> None:
        self.policy = policy
        self._times: dict[str, StageTimes] = {}
        self._budget = HedgeBudget()
        self._on_hedge = on_hedge  # (reason, winner, extra block-tokens) of each hedge
        self._on_work = on_work  # block-tokens of work

    def times(self, server: str) -> StageTimes:
        t = self._times.get(server)
        if t is None:
            t = self._times[server] = StageTimes()
        return t

    def count_work(self, block_tokens: float) -> None:
        self._budget.add_work(block_tokens)
        if self._on_work is not None:
            self._on_work(block_tokens)

    def hedged(self, reason: str, winner: str, extra_block_tokens: float) -> None:
        """A hedge ended: `winner` is primary, hedge or none; the loser's work was extra."""
        self._budget.add_extra(extra_block_tokens)
        if self._on_hedge is not None:
            self._on_hedge(reason, winner, extra_block_tokens)

    def should_hedge(self, spread: float, cost: float) -> bool:
        """Hedge this request's first token, given the spread of its chain's worst stage and
        the work a losing hedge would add?"""
        return self._budget.should_hedge(hedge_share(spread), cost, self.policy)
