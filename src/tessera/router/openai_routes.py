"""The OpenAI routes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`.

Thin: FastAPI parses and validates the body (pydantic), `serving.py` does the work and
`render.py` builds the answer; errors are raised and rendered by the app's one handler
(`errors.install_error_handlers`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tessera.api import openai as oa

from .errors import GENERATE_ERRORS
from .serving import RouterState, list_models, serve_chat, serve_completion


def build_routes(state: RouterState) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models", response_model=oa.ModelList, responses={401: GENERATE_ERRORS[401]})
    async def models() -> Response:
        return JSONResponse(list_models(state).model_dump())

    @api.post("/v1/chat/completions", responses={200: _ok(oa.ChatCompletion), **GENERATE_ERRORS})
    async def chat(req: oa.ChatCompletionRequest, request: Request) -> Response:
        return await serve_chat(state, req, request)

    @api.post("/v1/completions", responses={200: _ok(oa.Completion), **GENERATE_ERRORS})
    async def completions(req: oa.CompletionRequest, request: Request) -> Response:
        return await serve_completion(state, req, request)

    return api


def _ok(model: type[Any]) -> dict[str, Any]:
    return {
        "model": model,
        "description": "The answer (JSON), or with `stream: true` server-sent events of chunks",
        "content": {
            "text/event-stream": {
                "schema": {  # one server-sent event: JSON chunk (or error) text, last `[DONE]`
                    "type": "object",
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    "required": ["data"],
                }
            }
        },
    }
