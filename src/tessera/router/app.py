"""`build_app`: the router's FastAPI application from a plan, a problem and the stages' URLs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tessera.placement import Plan, Problem

from .chains import LiveChains
from .errors import error_body
from .metrics import RouterMetrics
from .openai_routes import RouterState, build_routes
from .stage_client import StageClient
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class RouterConfig:
    problem: Problem
    plan: Plan
    endpoints: Mapping[str, str]  # server name -> base URL
    model_name: str
    tokenizer: Tokenizer
    client: str | None = None  # which client of the problem this router is (default: the first)
    max_wait_s: float = 10.0  # how long a request may wait for room before 429
    poll_interval_s: float = 1.0
    step_timeout_s: float = 120.0


def build_app(config: RouterConfig) -> FastAPI:
    clients = {
        name: StageClient(name, url, timeout_s=config.step_timeout_s)
        for name, url in config.endpoints.items()
    }
    names = [c.name for c in config.problem.clients]
    client_index = names.index(config.client) if config.client in names else 0
    chains = LiveChains(config.problem, config.plan, clients, client_index=client_index)
    w = config.problem.workload
    state = RouterState(
        model_name=config.model_name,
        tokenizer=config.tokenizer,
        chains=chains,
        metrics=RouterMetrics(),
        max_input_tokens=w.max_input_tokens,
        max_output_tokens=w.max_output_tokens,
        max_wait_s=config.max_wait_s,
        created=int(time.time()),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await chains.poll_once()
        poller = asyncio.create_task(chains.poll_forever(config.poll_interval_s))
        yield
        poller.cancel()
        for c in clients.values():
            await c.aclose()

    app = FastAPI(title="tessera router", lifespan=lifespan)
    app.state.tessera = state

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        # Drop pydantic's union-branch labels (e.g. "str", "list[TextPart]") from the path.
        param = ".".join(
            p for p in loc if not any(ch in p for ch in "[]") and p not in ("str", "int")
        )
        if first.get("type") == "json_invalid":
            return error_body(
                400, "the body is not valid JSON", "invalid_request_error", None, "invalid_json"
            )
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return error_body(400, message, "invalid_request_error", param or None, "invalid_value")

    app.include_router(build_routes(state))

    @app.get("/health")
    async def health() -> Response:
        ok = chains.has_complete_chain()
        body = {"status": "ok" if ok else "no complete chain", "stages_up": chains.up_servers()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
