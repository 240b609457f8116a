"""Router metrics (names fixed in ARCHITECTURE.md), on a registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_HOP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class RouterMetrics:
    def __init__(self, model: str = "") -> None:
        r = self.registry = CollectorRegistry()
        self.model = model
        self.requests = Counter(
            "tessera_requests_total",
            "Requests under /v1/ by model and outcome: the HTTP status, or 499 when the client "
            "left before the whole answer",
            ["model", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "tessera_time_to_first_token_seconds",
            "Time to first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "tessera_time_per_output_token_seconds",
            "Mean time per output token after the first",
            buckets=_HOP_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "tessera_request_latency_seconds",
            "Request latency",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.route_cost = Histogram(
            "tessera_route_cost_seconds",
            "WS-RR cost of the chosen chain",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            "tessera_failovers_total", "Chains rebuilt after a stage failed mid-request", registry=r
        )
        self.wire_bytes = Counter(
            "tessera_wire_bytes_total",
            "Bytes of step messages between the router and a stage (direction: sent, received)",
            ["server", "direction"],
            registry=r,
        )
        self.hop = Histogram(
            "tessera_stage_hop_seconds",
            "Round trip of one step to one stage, seen by the router",
            ["server"],
            buckets=_HOP_BUCKETS,
            registry=r,
        )
        self.hedges = Counter(
            "tessera_hedges_total",
            "Hedged steps by reason (first_token, straggler) and winner (primary, hedge, none)",
            ["reason", "winner"],
            registry=r,
        )
        self.stage_work = Counter(
            "tessera_stage_work_block_tokens_total",
            "Stage work sent by the router: tokens times the blocks they ran through",
            registry=r,
        )
        self.hedge_extra_work = Counter(
            "tessera_hedge_extra_work_block_tokens_total",
            "Stage work of hedges that lost (cancelled), by reason: hedging's extra load",
            ["reason"],
            registry=r,
        )

    def count(self, outcome: str) -> None:
        """One request's outcome (every request under /v1/ is counted once)."""
        self.requests.labels(self.model, outcome).inc()

    def count_status(self, status: int) -> None:
        self.count(str(status))

    def hedged(self, reason: str, winner: str, extra_block_tokens: float) -> None:
        self.hedges.labels(reason, winner).inc()
        self.hedge_extra_work.labels(reason).inc(extra_block_tokens)

    def observe_wire(self, server: str, sent: int, received: int) -> None:
        self.wire_bytes.labels(server, "sent").inc(sent)
        self.wire_bytes.labels(server, "received").inc(received)
