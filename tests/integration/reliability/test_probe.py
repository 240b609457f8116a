"""Issue 12: stage probing does not depend on the router's event loop being free. A stalled
loop (here: blocked for longer than the /state timeout) must not mark a healthy stage down,
because the probes run on a thread of their own; a stage that stops answering is marked down,
and one that answers again is up at its first successful probe."""

from __future__ import annotations

import asyncio
import http.server
import pathlib
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "unit"))
from router_fakes import LAYOUT, FakeStage, problem_and_plan  # noqa: E402

from tessera.router.chains import LiveChains  # noqa: E402
from tessera.router.probe import ProbeThread  # noqa: E402
from tessera.router.stage_client import StageClient  # noqa: E402


class _StateServer(http.server.ThreadingHTTPServer):
    """GET /state answers a ready stage's state while `answering` is set, else 503."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StateHandler)
        self.answering = threading.Event()
        self.answering.set()
        self.body = asyncio.run(FakeStage("a", 0, 30).state()).model_dump_json().encode()


class _StateHandler(http.server.BaseHTTPRequestHandler):
    server: _StateServer

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        ok = self.server.answering.is_set()
        self.send_response(200 if ok else 503)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.server.body if ok else b"{}")

    def log_message(self, *args: object) -> None:
        return None


def test_a_stalled_event_loop_does_not_mark_stages_down_and_probes_end_down_marks():
    servers = {name: _StateServer() for name in LAYOUT}
    for s in servers.values():
        threading.Thread(target=s.serve_forever, daemon=True).start()
    problem, plan = problem_and_plan()

    async def scenario() -> list[str]:
        clients = {
            n: StageClient(n, f"http://127.0.0.1:{s.server_address[1]}") for n, s in servers.items()
        }
        chains = LiveChains(problem, plan, clients)  # type: ignore[arg-type]
        await chains.directory.poll_once()
        prober = ProbeThread(chains.directory, asyncio.get_running_loop(), interval_s=0.2)
        prober.start()
        seen_down: list[str] = []
        try:
            time.sleep(3.0)  # the router's loop stalls past the 2 s /state timeout
            await asyncio.sleep(0.5)  # the probes' answers are applied now
            seen_down += [n for n in LAYOUT if not chains.directory.is_up(n)]
            servers["b"].answering.clear()  # b stops answering: marked down
            while chains.directory.is_up("b"):
                await asyncio.sleep(0.05)
            chains.directory.mark_down("c")  # a failed step; c's probes still succeed
            servers["b"].answering.set()
            t0 = time.monotonic()
            while not (chains.directory.is_up("b") and chains.directory.is_up("c")):
                assert time.monotonic() - t0 < 30, "a probe should end the down marks"
                await asyncio.sleep(0.05)
        finally:
            prober.stop()
            for c in clients.values():
                await c.aclose()
        return seen_down

    try:
        assert asyncio.run(scenario()) == []
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()
