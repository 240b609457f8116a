"""Helpers for the reliability tests: the HA pool as seen by a test (router, stages, token)."""

from __future__ import annotations

import json
import pathlib
import sys
import time

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "datapath"))
from datapath_procs import REPO, Up, free_port  # noqa: E402, F401

KEY = "sk-test-reliability-1"
STAGES = ("a", "b", "c", "a2", "c2")
MODEL = "smollm2-135m-instruct"


def worker_pid(url: str) -> int:
    """The pid of the `tessera worker` serving `url` (found by its --port argument)."""
    port = url.rsplit(":", 1)[1]
    for proc in pathlib.Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--port={port}".encode() in argv and b"worker" in argv:
            return int(proc.name)
    raise AssertionError(f"no worker process on port {port}")


def stream_chat(pool: Pool, prompt: str, max_tokens: int, on_token=None):  # type: ignore[no-untyped-def]
    """Stream a greedy chat answer; `on_token(chain, n_tokens)` is called after each event and
    returns True once it has done its deed (then it is not called again). Returns (text, chain,
    error events)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    parts: list[str] = []
    errors = []
    done = False
    with pool.http.stream("POST", f"{pool.base_url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        chain = r.headers["x-tessera-chain"].split(">")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(event)
                continue
            if event["choices"]:
                parts.append(event["choices"][0]["delta"].get("content") or "")
            if on_token is not None and not done:
                done = on_token(chain, sum(1 for p in parts if p))
    return "".join(parts), chain, errors


def metric(pool: Pool, prefix: str) -> float:
    """The sum of the router's /metrics samples whose line starts with `prefix`."""
    lines = httpx.get(f"{pool.base_url}/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))


class Pool:
    def __init__(self, up: Up, keys_file: pathlib.Path, stages: tuple[str, ...] = STAGES) -> None:
        self.up = up
        self.stages = stages
        self.keys_file = keys_file
        self.base_url = up.base_url
        self.endpoints: dict[str, str] = json.loads((up.run_dir / "endpoints.json").read_text())
        self.token = (up.run_dir / "worker-token").read_text().strip()
        self.http = httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=60)

    def stage_state(self, name: str) -> dict:
        auth = {"authorization": f"Bearer {self.token}"}
        return httpx.get(f"{self.endpoints[name]}/state", headers=auth, timeout=5).json()

    def wait_all_up(self, timeout_s: float = 120) -> None:
        """Until the router routes to every stage again (killed ones are restarted)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                up = httpx.get(f"{self.base_url}/health", timeout=2).json().get("stages_up", [])
            except (httpx.TransportError, ValueError):
                up = []
            if set(up) == set(self.stages):
                return
            time.sleep(0.3)
        raise AssertionError(f"not all stages up after {timeout_s} s: {up}")
