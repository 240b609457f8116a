"""A hostile client cannot grow or freeze the router: a flood of huge request heads gets 431
(before any key check or body read) while another client is served normally at the same time;
heads and bodies that trickle in get 408 within their deadlines; every refusal is counted in
/metrics. The router runs on loopback with its real HTTP layer (uvicorn, `http_limits`) over
in-process fake stages."""

from __future__ import annotations

import json
import pathlib
import re
import resource
import socket
import sys
import threading
import time

import httpx
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from reliability_procs import router_on_fakes  # noqa: E402
from tests.unit.router_fakes import MODEL  # noqa: E402

from tessera.router.http_limits import HttpLimits  # noqa: E402

KEY = "sk-limits"
LIMITS = HttpLimits(
    max_head_bytes=64 * 1024, header_timeout_s=1.0, body_timeout_s=1.0, linger_s=20.0
)
MIB = 1 << 20


@pytest.fixture(scope="module")
def router(smollm2_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("limits") / "keys"
    keys.write_text(f"{KEY}\n")
    # Each step takes a little while, so that a normal answer spans the whole flood.
    with router_on_fakes(
        smollm2_dir, stage_options={"c": {"step_delay_s": 0.02}}, limits=LIMITS, api_keys_file=keys
    ) as r:
        yield r.port


def _status_line(sock: socket.socket) -> tuple[int, bytes]:
    """The status and whatever else of the answer arrived before the server closed."""
    sock.settimeout(15)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    assert match, f"no HTTP answer: {data[:200]!r}"
    return int(match.group(1)), data


def _flood(port: int, size_bytes: int, results: list[tuple[int, bytes, bool]]) -> None:
    """A request whose one header is `size_bytes` long, sent as fast as the server takes it,
    then its answer; and whether the sending was cut off by a reset."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pad: ")
        block = b"a" * MIB
        sent, reset = 0, False
        try:
            while sent < size_bytes:
                sock.sendall(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            reset = True
        results.append((*_status_line(sock), reset))
    finally:
        sock.close()


def _metric(port: int, status: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    line = re.search(rf'tessera_requests_total{{model="{MODEL}",status="{status}"}} (\S+)', text)
    return float(line.group(1)) if line else 0.0


def test_a_header_flood_gets_431_while_another_client_is_served(router):
    port = router
    before_431 = _metric(port, "431")
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    floods: list[tuple[int, bytes, bool]] = []
    threads = [
        threading.Thread(target=_flood, args=(port, size * MIB, floods))
        for size in (48, 52, 60, 64)
    ]
    served: list[httpx.Response] = []
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "temperature": 0,
    }

    def normal_client() -> None:
        with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=30) as c:
            while any(t.is_alive() for t in threads) or len(served) < 3:
                served.append(c.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body))

    for t in threads:
        t.start()
    normal = threading.Thread(target=normal_client)
    normal.start()
    for t in [*threads, normal]:
        t.join(timeout=120)
        assert not t.is_alive()

    assert len(floods) == 4
    for status, answer, reset in floods:
        assert status == 431, answer[:300]
        assert not reset  # the lingering close let the client send it all, then read the 431
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "request_header_fields_too_large" and "65536" in error["message"]
    assert served and {r.status_code for r in served} == {200}
    assert len({r.json()["choices"][0]["message"]["content"] for r in served}) == 1
    # Nothing of the 224 MiB was kept: the heads were cut at 64 KiB each.
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib) / 1024
    assert grown_mib < 48, f"peak memory grew by {grown_mib:.0f} MiB"
    up = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["stages_up"]
    assert set(up) == {"a", "b", "c", "a2", "c2"}  # the health poller was never starved
    assert _metric(port, "431") - before_431 == 4


def test_a_trickled_head_gets_408_within_its_deadline(router):
    port = router
    before = _metric(port, "408")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")  # ... and nothing more
        status, answer = _status_line(sock)
    assert status == 408 and b"request line and headers did not arrive" in answer
    assert _metric(port, "408") - before == 1


def test_a_trickled_body_gets_408_within_its_deadline(router):
    port = router
    before = _metric(port, "408")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + KEY.encode() + b"\r\ncontent-length: 100\r\n\r\n{"
        )
        status, answer = _status_line(sock)
    assert status == 408 and b"request body did not arrive" in answer
    assert _metric(port, "408") - before == 1


def test_an_idle_connection_is_closed_without_an_answer(router):
    with socket.create_connection(("127.0.0.1", router)) as sock:
        sock.settimeout(15)
        assert sock.recv(100) == b""  # closed by the head deadline, nothing sent


def test_a_client_that_leaves_mid_stream_is_counted_as_499_not_200(router):
    port = router
    before = {s: _metric(port, s) for s in ("200", "499")}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 60,  # about 1.2 s of steps: the client leaves long before the end
        "stream": True,
    }
    headers = {"authorization": f"Bearer {KEY}"}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first chunk, then hang up
    deadline = time.monotonic() + 10
    while _metric(port, "499") == before["499"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(port, "499") - before["499"] == 1
    assert _metric(port, "200") == before["200"]
