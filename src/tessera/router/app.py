"""`build_app`: the router's FastAPI application from a plan, a problem and the stages' URLs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tessera.api.vllm import split_endpoint
from tessera.placement import Plan, Problem

from .admission import AdmissionQueue
from .auth import ApiKeys
from .chains import LiveChains
from .errors import HEALTH_RESPONSES, install_error_handlers, openapi_schema
from .failover import FailoverPolicy
from .guard import CountOutcomes, Guard
from .http_limits import HttpLimits, uvicorn_settings
from .metrics import RouterMetrics
from .openai_routes import build_routes
from .probe import ProbeThread
from .reload import PlanFiles, PlanReloader, PlanSet
from .serving import RouterState
from .stage_client import StageClient
from .stragglers import StragglerPolicy
from .tokenizer import Tokenizer
from .vllm_chain import vllm_client

log = logging.getLogger("tessera.router")


@dataclass(frozen=True)
class RouterConfig:
    problem: Problem
    plan: Plan
    endpoints: Mapping[str, str]  # server name -> base URL
    model_name: str
    tokenizer: Tokenizer
    client: str | None = None  # which client of the problem this router is (default: the first)
    max_wait_s: float = 10.0  # how long a request may wait for room before 429
    max_queue: int = 256  # requests waiting for room at once; more get 429 at once
    poll_interval_s: float = 1.0
    step_timeout_s: float = 60.0  # a hop that takes longer counts as failed (then failover)
    down_s: float = 0.0  # a stage whose step failed is not used for this long at least
    failover_timeout_s: float = 30.0  # per failure: find a chain with room within this, or fail
    stragglers: StragglerPolicy = StragglerPolicy()  # adaptive step deadlines and hedging
    api_keys_file: pathlib.Path | None = None  # None: open (local development)
    worker_token: str | None = None  # sent to every worker (`Authorization: Bearer`)
    max_body_bytes: int = 4 << 20
    http_limits: HttpLimits = HttpLimits()  # request head size, head and body deadlines
    stage_clients: Mapping[str, StageClient] | None = None  # tests: in-process stand-ins
    plan_files: PlanFiles | None = None  # where plan, problem, endpoints came from: re-read
    reload_interval_s: float = 2.0  # how often `plan_files` are checked for a change
    # server -> the wire dtype its link got from the placement (`placement.wire`); none: exact
    wire_dtypes: Mapping[str, str] = dataclasses.field(default_factory=dict)


def build_app(config: RouterConfig) -> FastAPI:
    router_metrics = RouterMetrics(config.model_name)

    def make_client(name: str, url: str) -> StageClient:
        if config.stage_clients is not None and name in config.stage_clients:
            return config.stage_clients[name]
        engine, base = split_endpoint(url)
        if engine == "vllm":  # a whole-model vLLM server: a one-hop chain (vllm_chain.py)
            return vllm_client(
                config.problem,
                config.plan,
                name,
                base,
                model_name=config.model_name,
                timeout_s=config.step_timeout_s,
                token=config.worker_token,
            )
        return StageClient(
            name,
            url,
            timeout_s=config.step_timeout_s,
            token=config.worker_token,
            wire_dtype=config.wire_dtypes.get(name),
            on_bytes=router_metrics.observe_wire,
        )

    clients = dict(config.stage_clients or {}) or {
        name: make_client(name, url) for name, url in config.endpoints.items()
    }
    names = [c.name for c in config.problem.clients]
    client_index = names.index(config.client) if config.client in names else 0
    chains = LiveChains(
        config.problem,
        config.plan,
        clients,
        client_index=client_index,
        down_s=config.down_s,
        straggler_policy=config.stragglers,
        on_hedge=router_metrics.hedged,
        on_work=router_metrics.stage_work.inc,
    )
    keys = ApiKeys(config.api_keys_file) if config.api_keys_file is not None else None
    if keys is None:
        log.warning(
            "no --api-keys-file: the router is OPEN, anyone who reaches it can use it "
            "(give a file of keys, one per line, to require `Authorization: Bearer <key>`)"
        )
    if config.worker_token is None:
        log.warning("no worker token: calls to the stages are not authenticated")
    w = config.problem.workload
    state = RouterState(
        model_name=config.model_name,
        tokenizer=config.tokenizer,
        chains=chains,
        metrics=router_metrics,
        queue=AdmissionQueue(max_wait_s=config.max_wait_s, max_queue=config.max_queue),
        max_input_tokens=w.max_input_tokens,
        max_output_tokens=w.max_output_tokens,
        created=int(time.time()),
        failover=FailoverPolicy(timeout_s=config.failover_timeout_s),
    )

    def limits_from(new: PlanSet) -> None:
        state.use_workload(new.problem.workload)

    reloader = (
        PlanReloader(
            config.plan_files,
            chains.directory,
            clients,
            config.endpoints,
            make_client,
            config.client,
            on_apply=limits_from,
        )
        if config.plan_files is not None
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        directory = chains.directory
        await directory.poll_once()
        prober: ProbeThread | None = None
        if config.stage_clients is None:  # real stages: probed off the event loop
            prober = ProbeThread(directory, asyncio.get_running_loop(), config.poll_interval_s)
            prober.start()
            tasks = [asyncio.create_task(directory.housekeep_forever(config.poll_interval_s))]
        else:  # in-process stand-ins live on this loop
            tasks = [asyncio.create_task(directory.poll_forever(config.poll_interval_s))]
        if reloader is not None:
            tasks.append(asyncio.create_task(reloader.run_forever(config.reload_interval_s)))
        yield
        for task in tasks:
            task.cancel()
        if prober is not None:
            prober.stop()
        held = {id(c): c for c in [*clients.values(), *directory.stage_clients()]}
        for client in held.values():
            await client.aclose()

    app = FastAPI(title="tessera router", lifespan=lifespan)
    app.state.tessera = state
    app.state.tessera_reloader = reloader
    app.add_middleware(
        Guard,
        keys=keys,
        max_body_bytes=config.max_body_bytes,
        body_timeout_s=config.http_limits.body_timeout_s,
    )
    app.add_middleware(CountOutcomes, count=state.metrics.count)  # outside the Guard: sees all
    app.openapi = lambda: openapi_schema(  # type: ignore[method-assign]
        app,
        secured=keys is not None,
        model=config.model_name,
        max_output_tokens=state.max_output_tokens,
        vocab_size=config.tokenizer.vocab_size,
    )

    install_error_handlers(app)
    app.include_router(build_routes(state))

    def readiness() -> Response:
        ok = chains.has_complete_chain()
        body = {
            "status": "ok" if ok else "no complete chain",
            "stages_up": chains.directory.up_servers(),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/readyz", responses=HEALTH_RESPONSES)
    async def readyz() -> Response:
        """Ready to serve: 200 only while a complete chain of stages is up (readinessProbe)."""
        return readiness()

    @app.get("/health", responses=HEALTH_RESPONSES)
    async def health() -> Response:
        """The same as `/readyz` (kept for existing callers)."""
        return readiness()

    @app.get("/healthz")
    async def healthz() -> Response:
        """The process answers (livenessProbe): 200 even while no chain is up."""
        return JSONResponse({"status": "alive"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(config: RouterConfig, *, host: str, port: int) -> None:
    """Run the router with uvicorn, its HTTP limits applied below the app (`http_limits`)."""
    import uvicorn

    app = build_app(config)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        **uvicorn_settings(config.http_limits, app.state.tessera.metrics.count_status),
    )
