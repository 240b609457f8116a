"""The one mapping from errors to OpenAI error bodies and HTTP statuses (the router's edge)."""

from __future__ import annotations

import math

from fastapi.responses import JSONResponse

from tessera.api.openai import ErrorDetail, ErrorResponse
from tessera.errors import Busy, InvalidInput, NotFound, TesseraError, Unavailable


class ModelNotFound(NotFound):
    pass


class PromptTooLong(InvalidInput):
    pass


def error_body(
    status: int, message: str, kind: str, param: str | None, code: str | None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def error_response(exc: TesseraError) -> JSONResponse:
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
