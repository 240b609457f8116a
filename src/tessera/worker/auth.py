"""The deployment token on the stage protocol, as plain ASGI middleware (cheap per hop).

Every route but the probes (`/healthz`, `/readyz`, `/metrics`) needs `authorization: Bearer
<token>`; otherwise 401 with a `StageError` body. Compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REFUSED = json.dumps(
    {
        "error": {
            "message": "missing or wrong deployment token (authorization: Bearer <token>)",
            "type": "unauthorized",
            "code": "unauthorized",
        },
        "retry_after_s": None,
    }
).encode()


class TokenAuth:
    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self._expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(_REFUSED)).encode()),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _REFUSED, "more_body": False})
                return
        await self.app(scope, receive, send)
