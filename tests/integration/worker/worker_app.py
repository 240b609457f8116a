"""A worker on a tiny random Llama, served in-process and ready: for the worker's HTTP tests."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from tests.unit.datapath_helpers import tiny_model_dir

from tessera.worker.blocks import load_stage
from tessera.worker.server import Worker, WorkerSettings, build_app


def started_worker(
    start: int,
    end: int,
    *,
    memory_bytes: int = 10**9,
    max_length: int = 64,
    token: str | None = None,
) -> TestClient:
    """An entered TestClient on blocks [start, end), once /readyz answers; `__exit__` it."""
    d = tiny_model_dir("llama")
    settings = WorkerSettings("w", "tiny", start, end, memory_bytes, max_length, idle_timeout_s=60)
    worker = Worker(settings, lambda: load_stage(d, start, end))
    client = TestClient(build_app(worker, token=token))
    client.__enter__()
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return client
