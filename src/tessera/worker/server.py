"""The stage server: the stage protocol of `tessera.api.stage` over FastAPI.

Loading and a short calibration run on a background thread at start-up, so `/healthz` answers
at once and `/readyz` turns 200 when the stage can serve. Then all torch work runs on ONE
compute thread, the continuous-batching loop of `scheduler.Scheduler`: every session's pending
step joins the next forward pass. The event loop only parses, validates and answers. Errors of the `tessera.errors` vocabulary are mapped to HTTP in
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
from .batch import INVARIANT_MIN_ROWS, PAGE_TOKENS
from .blocks import StageModel
from .calibrate import Calibration, calibrate
from .emulated_link import EmulatedLink
from .sampling import Sampling
from .scheduler import BatchStats, FutureResolver, PositionAhead, Result, Scheduler, Step
from .sessions import SessionTable
from .tensors import decode_many, encode_tensor

log = logging.getLogger("tessera.worker")
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


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
    bandwidth_bytes_per_s: float | None = None  # emulate a slow link (tests, benchmarks)
    idle_timeout_s: float = 120.0
    max_batch_tokens: int = 256  # tokens in one batched forward (decodes plus prefill chunks)
    page_tokens: int = PAGE_TOKENS
    batch_invariant: bool = False  # pad forwards to INVARIANT_MIN_ROWS (see `batch`)


def kv_pages(memory_bytes: int, weight_bytes: int, page_bytes: int) -> int:
    """KV pages (of one block) that `--memory-bytes` holds beside the stage's weights (every
    tensor it loaded, the embedding and LM head included). InvalidInput if not even those fit."""
    room = memory_bytes - weight_bytes
    if room < 0:
        raise InvalidInput(
            "--memory-bytes",
            f"{memory_bytes} bytes do not even hold the weights ({weight_bytes} bytes)",
        )
    return room // page_bytes


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
        self.scheduler: Scheduler | None = None
        self._resolver: FutureResolver | None = None
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
            buckets=SECONDS_BUCKETS,
        )
        self.m_batch = Histogram(
            "tessera_stage_batch_sessions",
            "Sessions in one batched forward",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.m_batch_s = Histogram(
            "tessera_stage_batch_seconds",
            "Compute time of one batched forward",
            registry=self.registry,
            buckets=SECONDS_BUCKETS,
        )
        self.m_allocated = Gauge(
            "tessera_stage_allocated_slots",
            "KV pages (of one block) allocated now",
            registry=self.registry,
        )
        self.m_blocks.set(settings.end_block - settings.start_block)

    def load(self) -> None:
        try:
            stage: StageModel = self._loader()
            pages = kv_pages(
                self.settings.memory_bytes,
                stage.weight_bytes,
                stage.cache_bytes_per_token * self.settings.page_tokens,
            )
            self.calibration = calibrate(stage, self.settings.speed_factor)
            self.sessions = SessionTable(
                start_block=stage.start,
                end_block=stage.end,
                max_length=self.settings.max_length,
                total_slots=pages,
                decode_s_per_block=lambda: self.calibration.decode_s_per_block,
                page_tokens=self.settings.page_tokens,
            )
            self.scheduler = Scheduler(
                stage,
                max_batch_tokens=self.settings.max_batch_tokens,
                speed_factor=self.settings.speed_factor,
                min_rows=INVARIANT_MIN_ROWS if self.settings.batch_invariant else 0,
                on_batch=self._observe_batch,
            )
            threading.Thread(
                target=self.scheduler.run_forever, name="batch-loop", daemon=True
            ).start()
            self.stage = stage
            self._update_gauges()
            log.info(
                "stage %s ready: blocks [%d, %d), %d KV pages of %d tokens, "
                "%.2f ms/block/decode step",
                self.settings.name,
                stage.start,
                stage.end,
                self.sessions.total_slots,
                self.settings.page_tokens,
                self.calibration.decode_s_per_block * 1e3,
            )
        except Exception as exc:  # reported by /readyz and /state; the process stays up to say so
            log.exception("loading the stage failed")
            self.error = str(exc)

    def ready(self) -> tuple[StageModel, SessionTable, Scheduler]:
        if self.stage is None or self.sessions is None or self.scheduler is None:
            raise Unavailable(self.error or "the stage is still loading")
        return self.stage, self.sessions, self.scheduler

    def _update_gauges(self) -> None:
        if self.sessions is not None:
            self.m_active.set(len(self.sessions))
            self.m_free.set(self.sessions.free_slots)
            self.m_allocated.set(self.sessions.pages_allocated())

    def _observe_batch(self, stats: BatchStats) -> None:
        self.m_batch.observe(stats.sessions)
        self.m_batch_s.observe(stats.compute_s)
        self.m_step.labels("decode" if stats.tokens == stats.sessions else "prefill").observe(
            stats.compute_s
        )

    def submit(
        self, session_id: str, x: torch.Tensor, position: int, sampling: Sampling
    ) -> asyncio.Future[Result]:
        """Queue one step for the batching loop; the future resolves with (output, seconds)."""
        return self.submit_many([(session_id, x, position, sampling)])[0]

    def submit_many(
        self, steps: list[tuple[str, torch.Tensor, int, Sampling] | TesseraError]
    ) -> list[asyncio.Future[Result]]:
        """Queue steps together (they join the same forward); a future per step. An error in
        place of a step, or a step whose session is unknown, is that step's future's error."""
        _, sessions, scheduler = self.ready()
        loop = asyncio.get_running_loop()
        if self._resolver is None or self._resolver.loop is not loop:
            self._resolver = FutureResolver(loop)
        futures: list[asyncio.Future[Result]] = []
        queued: list[Step] = []
        now = time.monotonic()
        for entry in steps:
            future: asyncio.Future[Result] = loop.create_future()
            futures.append(future)
            if isinstance(entry, TesseraError):
                future.set_exception(entry)
                continue
            session_id, x, position, sampling = entry
            try:
                session = sessions.get(session_id, now)
            except NotFound as exc:
                future.set_exception(exc)
                continue
            queued.append(Step(session, x, position, sampling, self._resolver.callback(future)))
        scheduler.submit_many(queued)
        return futures

    def decode_inputs(
        self, inputs: list[tuple[str, bytes, str, str]]
    ) -> list[torch.Tensor | TesseraError]:
        """Step inputs (session id, bytes, dtype, shape), each validated for its session's first
        block: the tensor, or the error that step gets."""
        stage, sessions, _ = self.ready()
        now = time.monotonic()
        out: list[torch.Tensor | TesseraError | None] = []
        todo: list[tuple[bytes, str, str, bool]] = []
        for session_id, data, dtype, shape in inputs:
            try:
                first = sessions.get(session_id, now).start_block == 0
            except NotFound as exc:
                out.append(exc)
                continue
            out.append(None)
            todo.append((data, dtype, shape, first))
        decoded = iter(
            decode_many(
                todo, hidden_size=stage.hidden_size, vocab_size=int(stage.config.vocab_size)
            )
        )
        return [x if x is not None else next(decoded) for x in out]

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
            page_tokens=s.page_tokens,
            allocated_slots=sessions.pages_allocated() if sessions is not None else 0,
            queued_steps=self.scheduler.queued if self.scheduler is not None else 0,
            active_sessions=len(sessions) if sessions is not None else 0,
            decode_s_per_block=self.calibration.decode_s_per_block,
            prefill_s_per_block_per_token=self.calibration.prefill_s_per_block_per_token,
            weight_bytes=stage.weight_bytes if stage else 0,
            memory_bytes=s.memory_bytes,
            ready=stage is not None,
        )


def _step_out(
    session_id: str, future: asyncio.Future[Result], wire_dtype: str | None = None
) -> tuple[wire.StepOut, bytes]:
    """One step's entry in a /v1/steps answer, and its tensor bytes (none for a token), hidden
    states in `wire_dtype` where that is smaller (see `tensors.encode_tensor`)."""
    exc = future.exception()
    if exc is not None:
        if not isinstance(exc, TesseraError):
            raise exc
        status, error = _error_body(exc)
        out = wire.StepOut(
            session_id=session_id,
            status=status,
            error=error.error,
            retry_after_s=error.retry_after_s,
        )
        return out, b""
    result, compute_s = future.result()
    if isinstance(result, wire.StepToken):
        return wire.StepOut(
            session_id=session_id, status=200, token=result, compute_s=compute_s
        ), b""
    data, headers = encode_tensor(result, wire_dtype)
    out = wire.StepOut(
        session_id=session_id,
        status=200,
        dtype=headers[wire.HEADER_DTYPE],
        shape=headers[wire.HEADER_SHAPE],
        nbytes=len(data),
        compute_s=compute_s,
    )
    return out, data


def _error_response(exc: Exception) -> JSONResponse:
    status, body = _error_body(exc)
    retry = body.retry_after_s
    headers = {"Retry-After": str(max(1, round(retry)))} if retry is not None else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _error_body(exc: Exception) -> tuple[int, wire.StageError]:
    """The one mapping of errors to stage-protocol statuses and bodies."""
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
    return status, body


def build_app(worker: Worker, token: str | None = None) -> FastAPI:
    """The stage server; with `token`, every call but the probes must carry it."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=_load_then_serve, args=(worker,), daemon=True).start()
        expiry = asyncio.create_task(_expire_loop(worker))
        yield
        expiry.cancel()
        if worker.scheduler is not None:
            worker.scheduler.stop()
        worker.compute.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="tessera stage", lifespan=lifespan)
    if token is not None:
        app.add_middleware(TokenAuth, token=token)

    bandwidth = worker.settings.bandwidth_bytes_per_s
    link = EmulatedLink(bandwidth) if bandwidth else None

    async def delayed(response: Response) -> Response:
        if worker.settings.delay_s > 0:  # emulated network delay between router and this node
            await asyncio.sleep(worker.settings.delay_s)
        return response

    @app.post("/v1/sessions")
    async def open_session(request: Request) -> Response:
        try:
            req = wire.OpenSession.model_validate_json(await request.body())
            stage, sessions, _ = worker.ready()
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
            step_in = (session_id, await request.body(), h.get(wire.HEADER_DTYPE, ""),
                       h.get(wire.HEADER_SHAPE, ""))  # fmt: skip
            (x,) = worker.decode_inputs([step_in])
            if isinstance(x, TesseraError):
                raise x
            sampling = _sampling(
                _float_header(h, wire.HEADER_TEMPERATURE),
                _float_header(h, wire.HEADER_TOP_P),
                _int_header(h, wire.HEADER_SEED, 0),
                _int_header(h, wire.HEADER_TOP_LOGPROBS, 0),
            )
            position = _int_header(h, wire.HEADER_POSITION, 0)
            out, compute_s = await worker.submit(session_id, x, position, sampling)
        except (TesseraError, ValidationError) as exc:
            return await delayed(_error_response(exc))
        timing = {wire.HEADER_COMPUTE_S: f"{compute_s:.6f}"}  # lets callers split hop overhead
        if isinstance(out, wire.StepToken):
            return await delayed(JSONResponse(out.model_dump(), headers=timing))
        data, headers = encode_tensor(out)
        return await delayed(
            Response(content=data, media_type=wire.TENSOR_MEDIA_TYPE, headers={**headers, **timing})
        )

    @app.post("/v1/steps")
    async def steps(request: Request) -> Response:
        """Several sessions' steps in one message; each gets its own result (see the protocol)."""
        try:
            worker.ready()
            raw = await request.body()
            if link is not None:
                await link.carry("in", len(raw))
            head, payload = wire.unpack(raw)
            batch = wire.StepBatch.model_validate_json(head)
            parts = wire.split_payload(payload, [s.nbytes for s in batch.steps])
        except ValueError as exc:  # broken framing (pydantic's ValidationError is a ValueError)
            return await delayed(_error_response(InvalidInput("body", str(exc))))
        except TesseraError as exc:
            return await delayed(_error_response(exc))

        # Decode every input first, then queue them all at once: they join the same forward.
        inputs = [
            (i.session_id, d, i.dtype, i.shape) for i, d in zip(batch.steps, parts, strict=True)
        ]
        entries: list[tuple[str, torch.Tensor, int, Sampling] | TesseraError] = []
        for item, x in zip(batch.steps, worker.decode_inputs(inputs), strict=True):
            try:
                if isinstance(x, TesseraError):
                    raise x
                sampling = _sampling(
                    item.temperature, item.top_p, item.seed or 0, item.top_logprobs or 0
                )
            except TesseraError as exc:
                entries.append(exc)
                continue
            entries.append((item.session_id, x, item.position, sampling))
        futures = worker.submit_many(entries)
        await asyncio.wait(futures)
        done = [
            _step_out(i.session_id, f, i.wire_dtype)
            for i, f in zip(batch.steps, futures, strict=True)
        ]
        body = wire.pack(wire.StepResults(results=[r for r, _ in done]), [d for _, d in done])
        if link is not None:
            await link.carry("out", len(body))
        return await delayed(Response(content=body, media_type=wire.TENSOR_MEDIA_TYPE))

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


def _float_header(headers: Any, name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(name, f"{raw!r} is not a number") from None


def _sampling(
    temperature: float | None, top_p: float | None, seed: int, top_logprobs: int
) -> Sampling:
    """The step's sampling, each value in its range (400 naming it otherwise, never a 500 from
    torch: a top-p of 0 would leave no token to draw)."""
    temperature = 0.0 if temperature is None else temperature
    top_p = 1.0 if top_p is None else top_p
    if not 0.0 <= temperature <= 100.0:  # also refuses NaN
        raise InvalidInput(wire.HEADER_TEMPERATURE, f"{temperature} is not in [0, 100]")
    if not 0.0 < top_p <= 1.0:
        raise InvalidInput(wire.HEADER_TOP_P, f"{top_p} is not in (0, 1]")
    if not 0 <= top_logprobs <= wire.MAX_TOP_LOGPROBS:
        raise InvalidInput(
            wire.HEADER_TOP_LOGPROBS, f"{top_logprobs} is not in [0, {wire.MAX_TOP_LOGPROBS}]"
        )
    return Sampling(temperature, top_p, seed, top_logprobs)


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
