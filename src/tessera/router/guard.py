"""The router's front door, as plain ASGI middleware (before any parsing): API keys, body size,
content type, the body's deadline, and the count of every outcome. Everything under `/v1/` needs
`Authorization: Bearer <key>` when keys are configured; `/health`, `/metrics` and the OpenAPI
document stay open. Refusals are OpenAI error bodies: 401 `invalid_api_key`, 413
`request_too_large`, 415 `unsupported_media_type`, 408 `request_timeout`. A body without a
Content-Type is read as JSON (as FastAPI-based OpenAI servers do): it loses nothing.
(The request line and headers are bounded below the app: see `http_limits`.)
"""

from __future__ import annotations

import asyncio
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
OUTCOME_KEY = "tessera_outcome"  # in scope["state"]: a stream's final status, set by the route
CLIENT_GONE = "499"  # the outcome of a request whose client left before the whole answer


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
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys | None,
        max_body_bytes: int,
        body_timeout_s: float,
    ) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

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
        if not media:  # read as JSON, which is all this API takes
            kept = [(k, v) for k, v in headers if k != b"content-type"]  # an empty one, if any
            scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
        elif media != "application/json" and not media.endswith("+json"):
            await _refuse(
                send,
                415,
                f"Content-Type {media!r} is not supported: send the JSON body with "
                "`Content-Type: application/json` (curl: -H 'content-type: application/json')",
                "invalid_request_error",
                "unsupported_media_type",
                [],
            )
            return
        # Read the whole body here (bounded in size and time), then hand it on in one message.
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._body(receive)
        except TimeoutError:
            await _refuse(
                send,
                408,
                f"the request body did not arrive within {self.body_timeout_s:g} s",
                "invalid_request_error",
                "request_timeout",
                [(b"connection", b"close")],
            )
            return
        if isinstance(body, int):
            await _refuse(
                send,
                413,
                f"the request body is larger than {self.max_body_bytes} bytes",
                "invalid_request_error",
                "request_too_large",
                [],
            )
            return
        if not isinstance(body, bytes):  # disconnected: let the app see that
            await self.app(scope, _replay([body]), send)
            return
        whole = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([whole], then=receive), send)

    async def _body(self, receive: Receive) -> bytes | int | Message:
        """The whole body; its size so far once over the limit; the message that ended it."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class CountOutcomes:
    """Counts every request under `/v1/` once, whoever answers it (a route, a validation or
    HTTP error handler, the Guard, a crash): by its HTTP status; `CLIENT_GONE` when the client
    left before the whole answer went out; or, for a stream that ended in an error event after
    its 200, the status the route put in `scope["state"][OUTCOME_KEY]`."""

    def __init__(self, app: ASGIApp, *, count: Callable[[str], None]) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with the copies of `scope` inside
        status: int | None = None
        complete = False

        async def watched(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            if status is None:  # the app raised before answering: the server answers 500
                outcome = "500"
            elif not complete:
                outcome = CLIENT_GONE
            else:
                outcome = str(state.get(OUTCOME_KEY) or status)
            self.count(outcome)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()  # after the body: the client's disconnect, when it comes

    return receive
