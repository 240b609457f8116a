"""The router's HTTP connection protocol fed bytes directly (no sockets): an oversized request
head is a 431 OpenAI body and a close as soon as the limit is passed, a malformed one a 400, a
head that does not finish in time a 408; each refusal is reported for /metrics."""

from __future__ import annotations

import asyncio
import json

from uvicorn.config import Config
from uvicorn.server import ServerState

from tessera.router.http_limits import HttpLimits, uvicorn_settings


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _never_called(scope, receive, send):
    raise AssertionError("the application must not see a refused request")


def _connect(limits: HttpLimits, refused: list[int]):
    settings = uvicorn_settings(limits, refused.append)
    config = Config(_never_called, lifespan="off", **settings)
    protocol = settings["http"](config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def _answer(transport: FakeTransport) -> tuple[int, dict]:
    head, _, body = transport.written.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_an_oversized_head_is_431_as_soon_as_the_limit_is_passed_then_a_lingering_close():
    async def go():
        refused: list[int] = []
        limits = HttpLimits(max_head_bytes=4096, linger_s=0.1)
        protocol, transport = _connect(limits, refused)
        protocol.data_received(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-pad: ")
        chunks = 0
        while not transport.eof and chunks < 100:
            protocol.data_received(b"a" * 1024)
            chunks += 1
        assert transport.eof and chunks <= 5  # answered right after 4 KiB, not at the end
        status, body = _answer(transport)
        assert status == 431 and body["error"]["code"] == "request_header_fields_too_large"
        assert "4096" in body["error"]["message"]
        assert refused == [431]
        answered = transport.written
        for _ in range(100):  # the rest of the flood is dropped, not parsed or answered
            protocol.data_received(b"a" * 65536)
        assert transport.written == answered and not transport.closed
        await asyncio.sleep(0.3)
        assert transport.closed  # after the lingering time
        protocol.connection_lost(None)

    asyncio.run(go())


def test_a_long_request_line_is_431_too():
    async def go():
        refused: list[int] = []
        protocol, transport = _connect(HttpLimits(max_head_bytes=4096), refused)
        protocol.data_received(b"GET /v1/models?" + b"q" * 5000)
        assert transport.eof and _answer(transport)[0] == 431 and refused == [431]

    asyncio.run(go())


def test_a_malformed_head_is_a_400_body():
    async def go():
        refused: list[int] = []
        protocol, transport = _connect(HttpLimits(), refused)
        protocol.data_received(b"NOT HTTP AT ALL\r\n\r\n")
        status, body = _answer(transport)
        assert status == 400 and body["error"]["code"] == "invalid_http" and refused == [400]

    asyncio.run(go())


def test_a_head_that_does_not_finish_in_time_is_408_and_an_idle_connection_just_closes():
    async def go():
        refused: list[int] = []
        limits = HttpLimits(header_timeout_s=0.05)
        protocol, transport = _connect(limits, refused)
        protocol.data_received(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
        await asyncio.sleep(0.3)
        assert transport.closed and _answer(transport)[0] == 408 and refused == [408]
        idle, idle_transport = _connect(limits, refused)
        await asyncio.sleep(0.3)
        assert idle_transport.closed and idle_transport.written == b"" and refused == [408]

    asyncio.run(go())
