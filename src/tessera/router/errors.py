"""The one mapping from errors to OpenAI error bodies and HTTP statuses (the router's edge).

Errors travel as exceptions of the error vocabulary (`tessera.errors`, and the router's own
below); `install_error_handlers` registers the one handler that renders them, beside those for
FastAPI's validation and HTTP errors and for a crash. A stream whose 200 went out already tells
its error in an SSE event instead (`error_event`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.api.openai import UNSUPPORTED, ErrorDetail, ErrorResponse
from tessera.errors import Busy, InvalidInput, NotFound, TesseraError, Unavailable

from .guard import CLIENT_GONE

log = logging.getLogger("tessera.router")


class ModelNotFound(NotFound):
    pass


class PromptTooLong(InvalidInput):
    pass


class ClientGone(TesseraError):
    """The client left before the whole answer: answered with a bare 499, which nobody reads
    but the outcome counter (`guard.CountOutcomes`)."""

    def __init__(self) -> None:
        super().__init__("the client has gone")


def error_body(
    status: int, message: str, kind: str, param: str | None, code: str | None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def validation_error(errors: list[Any]) -> JSONResponse:
    """A 400 for pydantic's errors about a request body: one message naming the parameter."""
    if not errors:
        return error_body(400, "invalid request", "invalid_request_error", None, "invalid_value")
    first = _most_telling(errors)
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # Drop pydantic's union-branch labels (e.g. "str", "list[TextPart]") from the path.
    param = ".".join(p for p in loc if not _union_label(p)) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return error_body(
            400, "the body is not valid JSON", "invalid_request_error", None, "invalid_json"
        )
    if kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
        return error_body(400, message, "invalid_request_error", param, UNSUPPORTED)
    if kind == UNSUPPORTED:
        message = f"{param}: {first.get('msg')}"
        return error_body(400, message, "invalid_request_error", param, UNSUPPORTED)
    ctx = first.get("ctx") or {}
    if kind == "too_long" and "max_length" in ctx:
        detail = f"at most {ctx['max_length']} items are allowed, not {ctx.get('actual_length')}"
    else:
        detail = first.get("msg", "invalid value")
    return error_body(
        400, f"{param or 'body'}: {detail}", "invalid_request_error", param, "invalid_value"
    )


def _most_telling(errors: list[Any]) -> Any:
    """The error to report. For a value that matches no branch of a union (say `stop`, a string
    or a list of at most 4), pydantic reports every branch; a branch whose type matched says
    what is wrong (the list is too long), the others only that the type is not theirs."""
    first = errors[0]
    base = [p for p in first.get("loc", ()) if not _union_label(str(p))]
    same = [
        e
        for e in errors
        if [p for p in e.get("loc", ()) if not _union_label(str(p))][: len(base)] == base
    ]
    telling = [e for e in same if not str(e.get("type", "")).endswith("_type")]
    return telling[0] if telling else first


def _union_label(part: str) -> bool:
    """pydantic's names of union branches in an error location (not parameter names)."""
    return (
        any(ch in part for ch in "[]")
        or part in ("str", "int", "float", "bool", "none")
        or (part.startswith(("constrained-", "function-", "literal")))
    )


def error_response(exc: TesseraError) -> Response:
    if isinstance(exc, ClientGone):
        return Response(status_code=int(CLIENT_GONE))
    if isinstance(exc, PromptTooLong):
        return error_body(
            400, str(exc), "invalid_request_error", exc.field, "context_length_exceeded"
        )
    if isinstance(exc, InvalidInput):
        return error_body(
            400, str(exc), "invalid_request_error", exc.field or None, "invalid_value"
        )
    if isinstance(exc, ModelNotFound):
        return error_body(404, str(exc), "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, Busy):
        response = error_body(429, str(exc), "rate_limit_error", None, "no_capacity")
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return response
    if isinstance(exc, Unavailable):
        response = error_body(503, str(exc), "service_unavailable", None, "no_chain")
        response.headers["Retry-After"] = "1"
        return response
    return error_body(500, str(exc), "server_error", None, None)


def error_event(exc: TesseraError) -> dict[str, object]:
    """The body of an error sent inside an SSE stream (after the 200 headers went out)."""
    status = error_response(exc).status_code
    kind = "service_unavailable" if status == 503 else "server_error"
    return {"error": {"message": str(exc), "type": kind, "param": None, "code": str(status)}}


def install_error_handlers(app: FastAPI) -> None:
    """The router's exception handlers: the error vocabulary (one handler), FastAPI's request
    validation (400, not 422), HTTP errors (404, 405...), and anything else (500)."""

    @app.exception_handler(TesseraError)
    async def tessera_error(_request: Request, exc: TesseraError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_body(exc.status_code, str(exc.detail), kind, None, None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors()))

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the message only: request bodies are never logged
        return error_body(500, "internal error", "server_error", None, None)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Declared in the OpenAPI document so that clients (and schemathesis) know every answer.
GENERATE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request: the `param` field names the parameter"),
    401: _error("Missing or wrong API key (`invalid_api_key`)"),
    404: _error("Unknown model (`model_not_found`)"),
    408: _error("The request line, headers or body did not arrive in time (`request_timeout`)"),
    413: _error("Request body too large"),
    415: _error("Content-Type is not application/json"),
    431: _error("Request line and headers too large (`request_header_fields_too_large`)"),
    429: _error("No chain of stages has room: retry after `Retry-After` seconds"),
    503: _error("No complete chain of stages is up, or a failover found no replacement"),
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A complete chain of stages is up"},
    503: {"description": "No complete chain is up"},
}


def _set_on_integers(prop: dict[str, Any], **bounds: int) -> None:
    for branch in [prop, *prop.get("anyOf", [])]:
        if branch.get("type") == "integer":
            branch.update(bounds)
        elif branch.get("type") == "array":
            _set_on_integers(branch.get("items", {}), **bounds)


def _deployment_limits(
    schemas: dict[str, Any], model: str, max_output_tokens: int, vocab_size: int
) -> None:
    """The limits of this deployment, which the static request models cannot know."""
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas.get(name, {}).get("properties", {})
        if "model" in props:
            props["model"]["enum"] = [model]
        for field in ("max_tokens", "max_completion_tokens"):
            if field in props:
                _set_on_integers(props[field], maximum=max_output_tokens)
        if "prompt" in props:
            _set_on_integers(props["prompt"], maximum=vocab_size - 1)


def openapi_schema(
    app: FastAPI,
    *,
    secured: bool,
    model: str,
    max_output_tokens: int,
    vocab_size: int,
) -> dict[str, Any]:
    """FastAPI's document without its 422 answers (this router answers 400 instead), with this
    deployment's limits, and the bearer-key scheme on /v1 routes when keys are required."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version="1", routes=app.routes)
    _deployment_limits(
        doc.get("components", {}).get("schemas", {}), model, max_output_tokens, vocab_size
    )
    for path, item in doc.get("paths", {}).items():
        for op in item.values():
            op.get("responses", {}).pop("422", None)
            if secured and path.startswith("/v1/"):
                op["security"] = [{"bearer": []}]
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if secured:
        doc.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
    app.openapi_schema = doc
    return doc
