"""Helpers for the reliability tests: the HA pool as seen by a test (router, stages, token), and
the router alone on fake stages. bench/ imports them too (bench/_procs.py, edge.py, reliability.py),
as it imports tests/unit/router_fakes.py: one way to start a router or stream an answer."""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "datapath"))
from datapath_procs import REPO, Up, free_port  # noqa: E402

from tessera.router.http_limits import HttpLimits, uvicorn_settings  # noqa: E402

if str(REPO) not in sys.path:  # for tests.unit.router_fakes, when bench/ imports this module
    sys.path.insert(0, str(REPO))

KEY = "sk-test-reliability-1"
STAGES = ("a", "b", "c", "a2", "c2")
MODEL = "smollm2-135m-instruct"


def process_pid(*args: str) -> int:
    """The pid of a process whose argv holds every one of `args`."""
    for proc in pathlib.Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(a.encode() in argv for a in args):
            return int(proc.name)
    raise LookupError(f"no process with {args}")


def worker_pid(url: str) -> int:
    """The pid of the `tessera worker` serving `url` (found by its --port argument)."""
    return process_pid("worker", f"--port={url.rsplit(':', 1)[1]}")


class Streamed(NamedTuple):
    text: str
    chain: list[str]  # the stages that served it (x-tessera-chain)
    token_times: list[float]  # time.perf_counter() as each token arrived
    status: int
    errors: list[dict[str, Any]]  # error events in the stream


def stream_answer(  # type: ignore[no-untyped-def]
    base_url: str,
    prompt: str,
    max_tokens: int,
    on_token=None,
    *,
    http: httpx.Client | None = None,
    timeout_s: float = 300,
) -> Streamed:
    """Stream a greedy chat answer from the router at `base_url` (through `http`, for its
    headers). `on_token(chain, n_tokens)` is called after each token until it returns True
    (it has done its deed). A refused request comes back with its status and no text."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    parts: list[str] = []
    times: list[float] = []
    errors: list[dict[str, Any]] = []
    url = f"{base_url}/v1/chat/completions"
    with (http or httpx).stream("POST", url, json=body, timeout=timeout_s) as r:
        if r.status_code != 200:
            r.read()
            return Streamed(r.text, [], [], r.status_code, [])
        chain = r.headers["x-tessera-chain"].split(">")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(event)
            elif event["choices"] and event["choices"][0]["delta"].get("content"):
                parts.append(event["choices"][0]["delta"]["content"])
                times.append(time.perf_counter())
                if on_token is not None and on_token(chain, len(parts)):
                    on_token = None
    return Streamed("".join(parts), chain, times, 200, errors)


def stream_chat(pool: Pool, prompt: str, max_tokens: int, on_token=None):  # type: ignore[no-untyped-def]
    """`stream_answer` from the pool's router, which must accept it: (text, chain, error
    events)."""
    answer = stream_answer(pool.base_url, prompt, max_tokens, on_token, http=pool.http)
    assert answer.status == 200, answer.text
    return answer.text, answer.chain, answer.errors


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


def wait_ok(url: str, timeout_s: float = 30) -> None:
    """Until GET `url` (a /health or /readyz) answers 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 in {timeout_s} s")
        time.sleep(0.1)


class LocalRouter(NamedTuple):
    port: int
    base_url: str


@contextlib.contextmanager
def router_on_fakes(
    tokenizer_dir: pathlib.Path,
    *,
    stage_options: dict[str, dict[str, object]] | None = None,
    limits: HttpLimits | None = None,
    http: str = "auto",
    port: int | None = None,
    log_level: str = "warning",
    **config: object,
) -> Iterator[LocalRouter]:
    """The router with its real HTTP layer (uvicorn, in a thread of this process) on loopback
    over in-process fake stages (`fake_pool(**stage_options)`, `router_app(**config)`); yields
    once /health answers, and stops it after. With `limits` uvicorn runs as
    `tessera router` runs it (`uvicorn_settings`: h11, head size, deadlines); without, with
    uvicorn's `http` protocol and no head limit."""
    import uvicorn
    from tests.unit.router_fakes import fake_pool, router_app

    if limits is not None:
        config["http_limits"] = limits
    app: Any = router_app(fake_pool(**(stage_options or {})), tokenizer_dir, **config)
    settings = (
        {"http": http}
        if limits is None
        else uvicorn_settings(limits, app.state.tessera.metrics.count_status)
    )
    port = free_port() if port is None else port
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level=log_level, lifespan="on", **settings
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    router = LocalRouter(port, f"http://127.0.0.1:{port}")
    try:
        wait_ok(f"{router.base_url}/health")
        yield router
    finally:
        server.should_exit = True
        thread.join(timeout=10)
