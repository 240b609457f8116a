"""The stage server: the stage protocol of `tessera.api.stage` over FastAPI.

Loading and a short calibration run on a background thread at start-up, so `/healthz` answers
at once and `/readyz` turns 200 when the stage can serve. All torch work runs on ONE compute
thread (steps of different sessions queue there, like on one device); the event loop only
parses, validates and answers. Errors of the `tessera.errors` vocabulary are mapped to HTTP in
`_error_response`, the one place for this edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError

from tessera.api import stage as wire
from tessera.errors import Busy, InvalidInput, NotFound, TesseraError, Unavailable

from .auth import TokenAuth
from .blocks import StageModel
from .calibrate import Calibration, calibrate
from .sampling import Sampling, sample
from .sessions import SessionTable
from .tensors import decode_tensor, encode_tensor

log = logging.getLogger("tessera.worker")


class PositionAhead(TesseraError):
    """A step starts after the session's end: a step in between is missing."""


@dataclass(frozen=True)
class WorkerSettings:
    name: str
    model: str
    start_block: int
    end_block: int
    memory_bytes: int
    max_length: int
    speed_factor: float = 1.0
    delay_s: float = 0.0
    idle_timeout_s: float = 120.0


class Worker:
    """State shared by the routes: the stage, its sessions, the compute thread and metrics."""

    def __init__(self, settings: WorkerSettings, loader: Any) -> None:
        self.settings = settings
        self._loader = loader  # () -> StageModel, run on the compute thread
        self.stage: StageModel | None = None
        self.sessions: SessionTable | None = None
        self.calibration = Calibration(0.0, 0.0)
        self.error: str | None = None
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self.registry = CollectorRegistry()
        self.m_active = Gauge(
            "tessera_stage_sessions_active", "Open sessions", registry=self.registry
        )
        self.m_free = Gauge(
            "tessera_stage_free_slots", "Free (block, session) KV slots", registry=self.registry
        )
        self.m_blocks = Gauge("tessera_stage_blocks", "Blocks held", registry=self.registry)
        self.m_step = Histogram(
            "tessera_stage_step_seconds",
            "Compute time of one step",
            ["phase"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.m_blocks.set(settings.end_block - settings.start_block)

    def load(self) -> None:
        try:
            stage: StageModel = self._loader()
            slot_bytes = stage.cache_bytes_per_token * self.settings.max_length
            room = self.settings.memory_bytes - stage.weight_bytes
            if room < 0:
                raise InvalidInput(
                    "--memory-bytes",
                    f"{self.settings.memory_bytes} bytes do not even hold the weights "
                    f"({stage.weight_bytes} bytes)",
                )
            self.calibration = calibrate(stage, self.settings.speed_factor)
            self.sessions = SessionTable(
                start_block=stage.start,
                end_block=stage.end,
                max_length=self.settings.max_length,
                total_slots=room // slot_bytes,
                decode_s_per_block=lambda: self.calibration.decode_s_per_block,
            )
            self.stage = stage
            self._update_gauges()
            log.info(
                "stage %s ready: blocks [%d, %d), %d KV slots, %.2f ms/block/decode step",
                self.settings.name,
                stage.start,
                stage.end,
                self.sessions.total_slots,
                self.calibration.decode_s_per_block * 1e3,
            )
        except Exception as exc:  # reported by /readyz and /state; the process stays up to say so
            log.exception("loading the stage failed")
            self.error = str(exc)

    def ready(self) -> tuple[StageModel, SessionTable]:
        if self.stage is None or self.sessions is None:
            raise Unavailable(self.error or "the stage is still loading")
        return self.stage, self.sessions

    def _update_gauges(self) -> None:
        if self.sessions is not None:
            self.m_active.set(len(self.sessions))
            self.m_free.set(self.sessions.free_slots)

    def step(
        self, session_id: str, x: torch.Tensor, position: int, sampling: Sampling
    ) -> tuple[torch.Tensor | wire.StepToken, float]:
        """One prefill or decode step and its compute seconds (runs on the compute thread)."""
        stage, sessions = self.ready()
        session = sessions.get(session_id, time.monotonic())
        if position > session.length:
            raise PositionAhead(
                f"step at position {position} but session {session_id!r} holds "
                f"{session.length} tokens"
            )
        t = int(x.shape[1])
        if position + t > session.max_length:
            raise InvalidInput(
                "x-shape",
                f"{position + t} tokens exceed the session's max_length {session.max_length}",
            )
        if position < session.length:  # a retried or replayed step: rewind the cache first
            if position == 0:
                session.cache = stage.new_cache()
            else:  # transformers 5 crops by a negative count of tokens to drop
                session.cache.crop(position - session.length)
            session.length = position
        t0 = time.perf_counter()
        try:
            out = stage.forward(x, session.cache, position, session.start_block, session.end_block)
        except Exception:  # the cache may hold part of this step: empty it (a replay rebuilds it)
            session.cache, session.length = stage.new_cache(), 0
            raise
        session.length = position + t
        result: torch.Tensor | wire.StepToken = out
        if session.end_block == stage.num_blocks:
            token, logprob = sample(out, sampling, position + t)
            result = wire.StepToken(token=token, logprob=logprob, position=position + t)
        elapsed = time.perf_counter() - t0
        if self.settings.speed_factor > 1.0:  # emulate a slower device: hold it longer
            time.sleep((self.settings.speed_factor - 1.0) * elapsed)
            elapsed *= self.settings.speed_factor
        self.m_step.labels("prefill" if t > 1 else "decode").observe(elapsed)
        session.last_used_s = time.monotonic()
        return result, elapsed

    def state(self) -> wire.StageState:
        s = self.settings
        stage, sessions = self.stage, self.sessions
        return wire.StageState(
            name=s.name,
            model=s.model,
            num_blocks=stage.num_blocks if stage else 0,
            start_block=s.start_block,
            end_block=s.end_block,
            max_length=s.max_length,
            total_slots=sessions.total_slots if sessions is not None else 0,
            free_slots=sessions.free_slots if sessions is not None else 0,
            active_sessions=len(sessions) if sessions is not None else 0,
            decode_s_per_block=self.calibration.decode_s_per_block,
            prefill_s_per_block_per_token=self.calibration.prefill_s_per_block_per_token,
            weight_bytes=stage.weight_bytes if stage else 0,
            memory_bytes=s.memory_bytes,
            ready=stage is not None,
        )


def _error_response(exc: Exception) -> JSONResponse:
    """The one mapping of errors to stage-protocol HTTP answers."""
    status, kind, retry = 500, "internal_error", None
    if isinstance(exc, Busy):
        status, kind, retry = 429, "busy", exc.retry_after_s
    elif isinstance(exc, InvalidInput | ValidationError):
        status, kind = 400, "invalid_request"
    elif isinstance(exc, NotFound):
        status, kind = 404, "unknown_session"
    elif isinstance(exc, PositionAhead):
        status, kind = 409, "position_ahead"
    elif isinstance(exc, Unavailable):
        status, kind = 503, "not_ready"
    body = wire.StageError(
        error=wire.StageErrorBody(message=str(exc), type=kind, code=kind), retry_after_s=retry
    )
    headers = {"Retry-After": str(max(1, round(retry)))} if retry is not None else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def build_app(worker: Worker, token: str | None = None) -> FastAPI:
    """The stage server; with `token`, every call but the probes must carry it."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=_load_then_serve, args=(worker,), daemon=True).start()
        expiry = asyncio.create_task(_expire_loop(worker))
        yield
        expiry.cancel()
        worker.compute.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="tessera stage", lifespan=lifespan)
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    loop_executor = worker.compute

    async def delayed(response: Response) -> Response:
        if worker.settings.delay_s > 0:  # emulated network delay between router and this node
            await asyncio.sleep(worker.settings.delay_s)
        return response

    @app.post("/v1/sessions")
    async def open_session(request: Request) -> Response:
        try:
            req = wire.OpenSession.model_validate_json(await request.body())
            stage, sessions = worker.ready()
            session = sessions.open(
                req.session_id,
                req.start_block,
                req.end_block,
                req.max_length,
                stage.new_cache,
                time.monotonic(),
            )
        except (TesseraError, ValidationError) as exc:
            return await delayed(_error_response(exc))
        worker._update_gauges()
        body = wire.SessionOpened(
            session_id=session.session_id,
            start_block=session.start_block,
            end_block=session.end_block,
            slots=session.slots,
        )
        return await delayed(JSONResponse(body.model_dump()))

    @app.post("/v1/sessions/{session_id}/step")
    async def step(session_id: str, request: Request) -> Response:
        h = request.headers
        try:
            stage, sessions = worker.ready()
            session = sessions.get(session_id, time.monotonic())
            x = decode_tensor(
                await request.body(),
                h.get(wire.HEADER_DTYPE, ""),
                h.get(wire.HEADER_SHAPE, ""),
                tokens=session.start_block == 0,
                hidden_size=stage.hidden_size,
                vocab_size=int(stage.config.vocab_size),
            )
            position = _int_header(h, wire.HEADER_POSITION, 0)
            sampling = Sampling(
                temperature=_float_header(h, wire.HEADER_TEMPERATURE, 0.0),
                top_p=_float_header(h, wire.HEADER_TOP_P, 1.0),
                seed=_int_header(h, wire.HEADER_SEED, 0),
            )
            loop = asyncio.get_running_loop()
            out, compute_s = await loop.run_in_executor(
                loop_executor, worker.step, session_id, x, position, sampling
            )
        except (TesseraError, ValidationError) as exc:
            return await delayed(_error_response(exc))
        timing = {wire.HEADER_COMPUTE_S: f"{compute_s:.6f}"}  # lets callers split hop overhead
        if isinstance(out, wire.StepToken):
            return await delayed(JSONResponse(out.model_dump(), headers=timing))
        data, headers = encode_tensor(out)
        return await delayed(
            Response(content=data, media_type=wire.TENSOR_MEDIA_TYPE, headers={**headers, **timing})
        )

    @app.post("/v1/sessions/{session_id}/close")
    async def close(session_id: str) -> Response:
        closed = worker.sessions.close(session_id) if worker.sessions is not None else False
        worker._update_gauges()
        return JSONResponse(wire.SessionClosed(session_id=session_id, closed=closed).model_dump())

    @app.get("/state")
    async def state() -> Response:
        return JSONResponse(worker.state().model_dump())

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if worker.stage is None:
            return JSONResponse(
                {"status": "failed" if worker.error else "loading", "error": worker.error},
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        worker._update_gauges()
        return Response(generate_latest(worker.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _int_header(headers: Any, name: str, default: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(name, f"{raw!r} is not an integer") from None
    if value < 0:
        raise InvalidInput(name, "must not be negative")
    return value


def _float_header(headers: Any, name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(name, f"{raw!r} is not a number") from None
    if not 0.0 <= value <= 100.0:
        raise InvalidInput(name, f"{value} is out of range")
    return value


def _load_then_serve(worker: Worker) -> None:
    worker.compute.submit(worker.load).result()


async def _expire_loop(worker: Worker) -> None:
    while True:
        await asyncio.sleep(min(1.0, worker.settings.idle_timeout_s / 4))
        if worker.sessions is not None:
            gone = worker.sessions.expire(time.monotonic(), worker.settings.idle_timeout_s)
            if gone:
                log.info("expired %d idle sessions", len(gone))
                worker._update_gauges()
