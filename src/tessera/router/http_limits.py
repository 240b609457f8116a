"""The router's HTTP/1.1 connections: uvicorn's h11 protocol, with a bounded request head.

Why h11 and not httptools (uvicorn's default when it is installed): uvicorn's httptools
protocol has no limit on the request line or headers. It appends every header callback to a
list, so four clients sending 48-64 MiB headers grew the router from 115 to 430 MB and froze it
for 6-10 s. h11 buffers an incomplete head only up to `max_incomplete_event_size` (uvicorn's
`h11_max_incomplete_event_size`, the knob used here) and then raises a protocol error whose
`error_status_hint` is 431. The connection is closed after that much data, before any
application code, API-key check or body read runs.

uvicorn has no setting for two things, so this small subclass adds them:
- uvicorn answers every parse error with a plain-text 400. Here h11's own status hint is sent
  (431 for an oversized head) as an OpenAI error body, and counted in `/metrics`.
- uvicorn has no deadline for the head: its keep-alive timer stops at the first byte, so a client
  trickling a header a byte at a time held its connection for ever. Here the head must be
  complete within `header_timeout_s`, else 408 and close. (The body's deadline is the Guard's.)
- a lingering close after a 431 or 400 (as nginx does): closing a socket with unread data sends
  a reset, and a client still sending its huge head would see "connection reset", not the
  answer. Here the answer is followed by a half-close, and whatever the client still sends is
  dropped unparsed for at most `linger_s`, then the connection is closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState


@dataclass(frozen=True)
class HttpLimits:
    max_head_bytes: int = 64 * 1024  # request line plus headers; more: 431
    header_timeout_s: float = 10.0  # from the first byte of a head to its end; more: 408
    body_timeout_s: float = 30.0  # from the end of the head to the end of the body; more: 408
    keep_alive_s: int = 75  # an idle keep-alive connection is closed after this
    linger_s: float = 2.0  # after a 431/400: drop what the client still sends, then close


Refused = Callable[[int], None]  # told the status of every request refused below the app


def _response(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Connection(h11.Connection):
    """h11's server connection that remembers its last parse error (uvicorn's handler does
    not pass it on) and says when a request head is complete."""

    def __init__(self, max_head_bytes: int, on_head: Callable[[], None]) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.error: h11.RemoteProtocolError | None = None
        self._on_head = on_head

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise
        if isinstance(event, h11.Request):
            self._on_head()
        return event


def protocol_class(limits: HttpLimits, refused: Refused) -> type[asyncio.Protocol]:
    """uvicorn's `http=` protocol for these limits; `refused(status)` counts each refusal."""

    class LimitedH11Protocol(H11Protocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._conn = _Connection(self._max_head_bytes, self._head_complete)
            self.conn = self._conn
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_bytes = 0
            self._lingering: asyncio.TimerHandle | None = None

        @property
        def _max_head_bytes(self) -> int:  # uvicorn's knob, set from `limits` below
            return self.config.h11_max_incomplete_event_size or limits.max_head_bytes

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()  # a connection that never sends a whole head is closed too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._lingering is not None:
                self._lingering.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._lingering is not None:
                return  # refused already: dropped, neither parsed nor kept
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of the next request on a kept-alive connection
            self._head_bytes += len(data)
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            error = self._conn.error
            if error is not None and error.error_status_hint == 431:
                refusal = _response(
                    431,
                    "Request Header Fields Too Large",
                    f"the request line and headers are larger than {self._max_head_bytes} bytes",
                    "request_header_fields_too_large",
                )
                status = 431
            else:
                detail = f": {error}" if error is not None else ""
                refusal = _response(
                    400, "Bad Request", f"invalid HTTP request{detail}", "invalid_http"
                )
                status = 400
            refused(status)
            self.transport.write(refusal)
            if self.transport.can_write_eof():
                self.transport.write_eof()  # the answer is complete; the client may still send
            self._lingering = self.loop.call_later(limits.linger_s, self.transport.close)

        def _arm(self) -> None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_complete(self) -> None:
            self._disarm()

        def _head_late(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._head_bytes > 0:  # a head was coming, too slowly: say why it is cut
                refused(408)
                self.transport.write(
                    _response(
                        408,
                        "Request Timeout",
                        f"the request line and headers did not arrive within "
                        f"{limits.header_timeout_s:g} s",
                        "request_timeout",
                    )
                )
            self.transport.close()  # an idle connection just closes, like keep-alive's timer

    return LimitedH11Protocol


def uvicorn_settings(limits: HttpLimits, refused: Refused) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.run`/`uvicorn.Config` that apply these limits."""
    return {
        "http": protocol_class(limits, refused),
        "h11_max_incomplete_event_size": limits.max_head_bytes,
        "timeout_keep_alive": limits.keep_alive_s,
    }
