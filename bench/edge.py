"""The router's HTTP edge: what bounding the request head costs, and what it buys.

The router runs as a subprocess over in-process fake stages (no torch, steps of 2 ms), once with
uvicorn's httptools protocol (the baseline: uvicorn's default, no header limit) and once with
the router's own (`http_limits`: h11 with a 64 KiB head). For each: the median time of a
streamed 16-token chat answer alone; then the same while four clients send 64 MiB headers, and
the router's peak memory growth. Ratios are against the baseline of the same run.
"""

from __future__ import annotations

import os
import pathlib
import socket
import statistics
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration" / "reliability"))
from reliability_procs import free_port, router_on_fakes, stream_answer, wait_ok  # noqa: E402

from tessera.router.http_limits import HttpLimits  # noqa: E402

FLOOD_MIB = 64
FLOODS = 4
ANSWERS = 30


def _serve(kind: str, port: int) -> None:
    """The router on fake stages in this process (the bench's child) until it is terminated."""
    from tests.unit.datapath_helpers import smollm2_dir

    limits = HttpLimits() if kind == "limited" else None
    with router_on_fakes(
        smollm2_dir(),
        stage_options={"c": {"step_delay_s": 0.002}},
        limits=limits,
        http="httptools",  # the baseline, uvicorn's default
        port=port,
        log_level="error",
    ):
        threading.Event().wait()


def _peak_rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _answer_s(base: str) -> float:
    t0 = time.perf_counter()
    stream_answer(base, "hi", 16, timeout_s=120)
    return time.perf_counter() - t0


def _flood(port: int) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pad: ")
            block = b"a" * (1 << 20)
            for _ in range(FLOOD_MIB):
                sock.sendall(block)
            sock.sendall(b"\r\n\r\n")
            sock.recv(100)
    except OSError:
        pass  # cut off by the server: what the limit is for


def _measure(kind: str) -> tuple[float, float, float]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.edge", "--serve", kind, str(port)], cwd=REPO, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ok(f"{base}/health", timeout_s=120)
        _answer_s(base)  # warm-up
        alone = statistics.median(_answer_s(base) for _ in range(ANSWERS))
        rss_before = _peak_rss_mib(proc.pid)
        floods = [threading.Thread(target=_flood, args=(port,)) for _ in range(FLOODS)]
        for t in floods:
            t.start()
        during = []
        while any(t.is_alive() for t in floods) or len(during) < 5:
            during.append(_answer_s(base))
        for t in floods:
            t.join()
        return alone, statistics.median(during), _peak_rss_mib(proc.pid) - rss_before
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    rows = {kind: _measure(kind) for kind in ("httptools", "limited")}
    base_alone, base_during, _ = rows["httptools"]
    print(f"streamed 16-token answers on fake stages; during: {FLOODS} clients x {FLOOD_MIB} MiB")
    print("protocol     alone_s  ratio  during_flood_s  ratio  peak_rss_growth_mib")
    for kind, (alone, during, grown) in rows.items():
        print(
            f"{kind:<11} {alone:8.4f} {alone / base_alone:6.2f} {during:15.4f} "
            f"{during / base_during:6.2f} {grown:20.1f}"
        )
    print("(provisional: a shared, loaded machine)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
