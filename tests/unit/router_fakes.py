"""In-process stand-ins for stage workers, to test the router without torch or sockets.

A `FakeStage` keeps, per session, the token ids it has seen (its "KV cache": rewound when a
step starts before its end, refused when it starts after). Hidden states are the token ids
themselves; the last stage "samples" a token that depends on the whole history and the seed,
so a wrong replay (a lost or repeated token) changes every later token. `die_at_step=N` makes
the N-th step (0-based) fail like a killed process, and every call after it; `freeze_at_step=N`
makes it hang from its N-th step on, like a SIGSTOPped process (`/state` fails: a probe times
out), until `thaw()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import pathlib

import numpy as np

from tessera.api import stage as wire
from tessera.errors import Busy, NotFound
from tessera.placement import plan_from_dict, problem_from_dict
from tessera.router.stage_client import ProbeTarget, StageFailed, Tensor

NUM_BLOCKS = 30
MODEL = "smollm2-135m-instruct"


class FakeStage:
    def __init__(
        self,
        name: str,
        start: int,
        end: int,
        *,
        total_slots: int = 300,
        die_at_step: int | None = None,
        step_delay_s: float = 0.0,
        freeze_at_step: int | None = None,
        wire_dtype: str | None = None,
    ) -> None:
        self.server, self.start, self.end = name, start, end
        self.base_url, self.token = f"http://fake-{name}", None
        self.wire_dtype = wire_dtype  # the link's wire dtype (placement.wire)
        self.asked_wire: list[str | None] = []  # the wire dtype each step asked for
        self.total_slots = total_slots
        self.die_at_step = die_at_step
        self.step_delay_s = step_delay_s
        self.steps = 0
        self.dead = False
        self.sessions: dict[str, tuple[int, list[int]]] = {}  # sid -> (slots, tokens seen)
        self.max_used = 0
        self.freeze_at_step = freeze_at_step
        self.frozen = False
        self._thawed: asyncio.Event | None = None

    def thaw(self) -> None:
        self.frozen = False
        self.freeze_at_step = None
        if self._thawed is not None:
            self._thawed.set()

    def _alive(self) -> None:
        if self.dead:
            raise StageFailed(self.server, "ClientConnectorError: connection refused")

    @property
    def used(self) -> int:
        return sum(slots for slots, _ in self.sessions.values())

    async def open(self, session_id: str, start: int, end: int, max_length: int) -> int:
        self._alive()
        if not self.start <= start < end <= self.end:
            raise StageFailed(self.server, "HTTP 400: bad block range")
        if end - start > self.total_slots - self.used:
            raise Busy(f"stage {self.server}: no room", retry_after_s=1.0)
        self.sessions[session_id] = (end - start, [])
        self.max_used = max(self.max_used, self.used)
        return end - start

    async def step(
        self,
        session_id: str,
        x: Tensor,
        position: int,
        sampling: object,
        wire_dtype: str | None = None,
    ) -> Tensor | wire.StepToken:
        self._alive()
        self.asked_wire.append(wire_dtype)
        if self.die_at_step is not None and self.steps >= self.die_at_step:
            self.dead = True
            raise StageFailed(self.server, "ServerDisconnectedError: Server disconnected")
        if self.freeze_at_step is not None and self.steps >= self.freeze_at_step:
            self.frozen = True
            self._thawed = self._thawed or asyncio.Event()
            await self._thawed.wait()
        self.steps += 1
        if self.step_delay_s:
            await asyncio.sleep(self.step_delay_s)
        if session_id not in self.sessions:
            raise NotFound(f"stage {self.server}: unknown session {session_id!r}")
        ids = np.frombuffer(x.data, dtype="<i8").tolist()
        seen = self.sessions[session_id][1]
        if position > len(seen):
            raise StageFailed(self.server, "HTTP 409: position ahead")
        del seen[position:]
        seen.extend(ids)
        if self.end < NUM_BLOCKS:
            return Tensor.tokens(ids)
        seed = sampling.seed if sampling.temperature > 0 else 0  # type: ignore[attr-defined]
        digest = hashlib.sha256(f"{seed}:{seen}".encode()).digest()
        token = 300 + int.from_bytes(digest[:4], "little") % 20000
        k = getattr(sampling, "top_logprobs", 0)  # the chosen token first, then made-up ones
        top = [wire.TokenLogprob(token=token + i, logprob=-1.0 - i) for i in range(k)]
        return wire.StepToken(
            token=token, logprob=-1.0, position=len(seen), top_logprobs=top if k else None
        )

    async def close(self, session_id: str) -> None:
        self._alive()
        self.sessions.pop(session_id, None)

    async def state(self) -> wire.StageState:
        self._alive()
        if self.frozen:
            raise StageFailed(self.server, "TimeoutError: /state did not answer")
        free = self.total_slots - self.used
        return wire.StageState(
            name=self.server,
            model=MODEL,
            num_blocks=NUM_BLOCKS,
            start_block=self.start,
            end_block=self.end,
            max_length=2048,
            total_slots=self.total_slots,
            free_slots=free,
            page_tokens=4096,  # one page holds any request here: a session needs a slot a block
            allocated_slots=self.used,
            queued_steps=0,
            active_sessions=len(self.sessions),
            decode_s_per_block=0.001,
            prefill_s_per_block_per_token=0.0001,
            weight_bytes=1,
            memory_bytes=2,
            ready=True,
        )

    def probe_target(self) -> ProbeTarget:
        # In process, no connections: the probe thread may read this very stand-in.
        return ProbeTarget(self.server, self.base_url, self._probe_client, self.settle_probe)

    def _probe_client(self) -> FakeStage:
        return self

    def settle_probe(self, state: wire.StageState) -> wire.StageState:
        return state

    async def aclose(self) -> None:
        return None


# The test pool: a preferred chain a>b>c and replacements a2 [0,15), c2 [15,30) behind slow
# links, so that every block has two holders and every stage of a>b>c can be replaced.
LAYOUT = {"a": (0, 10), "b": (10, 20), "c": (20, 30), "a2": (0, 15), "c2": (15, 30)}


def problem_and_plan(max_input: int = 512, max_output: int = 64) -> tuple[object, object]:
    servers = [
        {
            "name": n,
            "memory_bytes": 10**10,
            "decode_s_per_block": 0.001,
            "prefill_s_per_block": {"per_token": 0.0001, "fixed": 0.001},
        }
        for n in LAYOUT
    ]
    links = [
        {
            "client": "router",
            "server": n,
            "rtt_s": 0.05 if n.endswith("2") else 0.001,
            "prefill_s": 0.05 if n.endswith("2") else 0.002,
        }
        for n in LAYOUT
    ]
    problem = problem_from_dict(
        {
            "model": {
                "name": MODEL,
                "num_blocks": NUM_BLOCKS,
                "block_bytes": 14_000_000,
                "cache_bytes_per_token": 1536,
            },
            "workload": {
                "max_input_tokens": max_input,
                "max_output_tokens": max_output,
                "concurrent_requests": 4,
            },
            "servers": servers,
            "clients": [{"name": "router"}],
            "links": links,
        }
    )
    plan = plan_from_dict(
        {
            "solver": "manual",
            "feasible": True,
            "placement": [
                {"server": n, "start": a, "blocks": b - a} for n, (a, b) in LAYOUT.items()
            ],
            "routes": {"router": ["a", "b", "c"]},
        }
    )
    return problem, plan


def fake_pool(**per_stage: dict[str, object]) -> dict[str, FakeStage]:
    return {
        n: FakeStage(n, a, b, **per_stage.get(n, {}))  # type: ignore[arg-type]
        for n, (a, b) in LAYOUT.items()
    }


def router_app(
    stages: dict[str, FakeStage],
    tokenizer_dir: pathlib.Path,
    **config: object,
) -> object:
    from tessera.router.app import RouterConfig, build_app
    from tessera.router.tokenizer import Tokenizer

    problem, plan = problem_and_plan()
    cfg = RouterConfig(
        problem,  # type: ignore[arg-type]
        plan,  # type: ignore[arg-type]
        {n: f"http://fake-{n}" for n in stages},
        MODEL,
        Tokenizer(tokenizer_dir),
        stage_clients=stages,  # type: ignore[arg-type]
        **config,  # type: ignore[arg-type]
    )
    return build_app(cfg)
