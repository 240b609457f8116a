"""Stage workers for the benches that talk to them directly (datapath, wire, hop).

Not a bench itself (the leading underscore keeps `python -m bench` from running it). The command
line, free ports and the wait for an answer are the integration tests' (datapath_procs,
reliability_procs), so that benches and tests start tessera the same way.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "integration" / d) for d in ("datapath", "reliability")]
from datapath_procs import TESSERA  # noqa: E402
from reliability_procs import free_port, wait_ok  # noqa: E402


@contextlib.contextmanager
def workers(
    model: str,
    blocks: Sequence[str],
    *extra: str,
    memory: str = "2Gi",
    max_length: int = 512,
    quiet: bool = False,
) -> Iterator[list[str]]:
    """One `tessera worker` per entry of `blocks` ("0:15") of `model`, one torch thread each,
    on free loopback ports; yields their base URLs once each is ready, and stops them after.
    `quiet`: errors only, and their stderr dropped."""
    started: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for b in blocks:
            port = free_port()
            args = [f"--model={model}", f"--blocks={b}", f"--memory-bytes={memory}"]
            started.append(
                subprocess.Popen(
                    [
                        *TESSERA,
                        "worker",
                        *args,
                        f"--port={port}",
                        "--threads=1",
                        f"--max-length={max_length}",
                        f"--log-level={'error' if quiet else 'warning'}",
                        *extra,
                    ],
                    env={**os.environ, "HF_HUB_OFFLINE": "1"},
                    stderr=subprocess.DEVNULL if quiet else None,
                )  # fmt: skip
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_ok(f"{url}/readyz", timeout_s=180)
        yield urls
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.wait(timeout=15)
