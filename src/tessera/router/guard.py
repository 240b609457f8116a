"""The router's front door, as plain ASGI middleware (before any parsing): API keys, body size,
content type. Everything under `/v1/` needs `Authorization: Bearer <key>` when keys are
configured; `/health`, `/metrics` and the OpenAPI document stay open. Refusals are OpenAI error
bodies: 401 `invalid_api_key`, 413 `request_too_large`, 415 `unsupported_media_type`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .auth import ApiKeys

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIX = "/v1/"


async def _refuse(
    send: Send, status: int, message: str, kind: str, code: str, extra: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class Guard:
    def __init__(self, app: ASGIApp, *, keys: ApiKeys | None, max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self.keys is not None and not self.keys.check(_bearer(headers)):
            given = _bearer(headers) is not None
            await _refuse(
                send,
                401,
                "Incorrect API key provided."
                if given
                else "You didn't provide an API key: send `Authorization: Bearer <key>`.",
                "invalid_request_error",
                "invalid_api_key",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        ctype = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1")
        media = ctype.split(";")[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):
            await _refuse(
                send,
                415,
                f"Content-Type {media!r} is not supported: send application/json",
                "invalid_request_error",
                "unsupported_media_type",
                [],
            )
            return
        # Read the whole body here (bounded), then hand it on in one message.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)  # disconnected: let it see that
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _refuse(
                    send,
                    413,
                    f"the request body is larger than {self.max_body_bytes} bytes",
                    "invalid_request_error",
                    "request_too_large",
                    [],
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], then=receive), send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()  # after the body: the client's disconnect, when it comes

    return receive
