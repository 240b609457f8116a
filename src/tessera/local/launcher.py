"""`tessera up`: solve the placement of a virtual pool, run its stages and the router, supervise.

Children are the same commands a Kubernetes pod runs (`tessera worker ...`, `tessera router
...`), started in their own sessions so that a terminal's Ctrl-C reaches only the launcher,
which then stops them in order. A child that dies is restarted after a back-off (1 s, 2 s, 4 s,
... up to 30 s) while the others carry on; after `MAX_DEATHS` deaths within `DEATH_WINDOW_S`
the launcher stops everything and says which child kept dying and where its log is.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from tessera.api.launch import RouterLaunch, WorkerLaunch
from tessera.api.vllm import API_KEY_ENV, endpoint
from tessera.errors import Infeasible
from tessera.modelfiles import read_config, sizes
from tessera.placement import Plan, Problem, solve
from tessera.placement.planset import PlanFiles, PlanSet
from tessera.placement.replicas import split_concurrency
from tessera.placement.wire import LinkWire

from .config import (
    ROUTER_CLIENT,
    TYPICAL_PROMPT_TOKENS,
    LocalConfig,
    build_problem,
    link_wires,
    pinned_plan,
    typical_first_token_s,
    vllm_nodes,
    with_replicas,
    without_vllm,
)
from .vllm import vllm_command

MAX_DEATHS = 5
DEATH_WINDOW_S = 120.0
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: pathlib.Path
    health_url: str
    proc: subprocess.Popen[bytes] | None = None
    deaths: list[float] = field(default_factory=list)
    restart_at: float | None = None
    env: dict[str, str] | None = None  # added to the launcher's environment

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        log.close()
        self.restart_at = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal the child's whole process group (it leads one: `start_new_session`), so that
        what it started goes too: vLLM's engine process outlives a killed API server."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass  # the group is gone: every process of it has exited

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:  # noqa: S310 - our own loopback URL
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def plan_summary(table: str, problem: Problem, plan: Plan) -> str:
    """`tessera plan`'s table, with its first-token line (a prompt of `max_input_tokens`, the
    placement's design point) replaced by the prediction for a short chat prompt, labelled."""
    ttft = typical_first_token_s(problem, plan)
    line = (
        f"predicted first token    : {ttft * 1000:.1f} ms "
        f"for a {TYPICAL_PROMPT_TOKENS}-token prompt"
    )
    return "\n".join(
        line if row.startswith("predicted first-token") else row for row in table.splitlines()
    )


class Launcher:
    def __init__(
        self,
        cfg: LocalConfig,
        model_dir: pathlib.Path,
        *,
        port: int | None = None,
        run_dir: pathlib.Path | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.model_dir = model_dir
        self.port = port if port is not None else cfg.router.port
        self.run_dir = run_dir or pathlib.Path(tempfile.mkdtemp(prefix="tessera-up-"))
        self.out = out
        self.children: list[Child] = []
        self.stopping = False
        self.token_path = self.run_dir / "worker-token"
        self.wires: tuple[LinkWire, ...] = ()  # each link's wire dtype (placement.wire)
        self.wire_dtypes: dict[str, str] = {}  # server -> a compressed wire dtype for its link

    # --- plan ---------------------------------------------------------------------------------
    def plan(self) -> tuple[Problem, Plan]:
        model_sizes = sizes(read_config(self.model_dir), self.cfg.model.dtype)
        problem = build_problem(self.cfg, model_sizes)
        replicas = vllm_nodes(self.cfg)
        if replicas and len(replicas) < len(self.cfg.nodes):
            # The split chains are placed over the Tessera nodes; each vLLM node holds it all.
            split_cfg = without_vllm(self.cfg)
            concurrency = split_concurrency(self.cfg.workload.concurrent_requests, len(replicas))
            split_problem = build_problem(split_cfg, model_sizes).with_concurrency(concurrency)
            split = pinned_plan(split_cfg, split_problem) or solve(split_problem, self.cfg.solver)  # type: ignore[arg-type]
            if not split.feasible:
                raise Infeasible(f"the split nodes cannot serve this model: {split.reason}")
            return problem, with_replicas(problem, split, replicas)
        if replicas:
            return problem, with_replicas(problem, Plan("vllm", True), replicas)
        plan = pinned_plan(self.cfg, problem) or solve(problem, self.cfg.solver)  # type: ignore[arg-type]
        if not plan.feasible:
            raise Infeasible(f"the virtual pool cannot serve this model: {plan.reason}")
        self.choose_wires(problem, plan, model_sizes.hidden_size)
        return problem, plan

    def choose_wires(self, problem: Problem, plan: Plan, hidden_size: int) -> None:
        self.wires = link_wires(self.cfg, problem, plan, hidden_size)
        self.wire_dtypes = {
            lk.server: lk.wire_dtype for lk in self.wires if lk.wire_dtype != self.cfg.model.dtype
        }

    def wire_lines(self, problem: Problem) -> list[str]:
        """One line per link that does not carry the compute dtype."""
        tokens = problem.workload.max_input_tokens
        return [
            f"wire to {lk.server:<14}: {lk.wire_dtype} (a {tokens}-token prompt's hidden states "
            f"cross in {lk.transfer_s * 1e3:.0f} ms, {lk.exact_transfer_s * 1e3:.0f} ms exact)"
            for lk in self.wires
            if lk.server in self.wire_dtypes
        ]

    def write_files(self, problem: Problem, plan: Plan, endpoints: dict[str, str]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name, text in PlanSet(problem, plan, endpoints).texts(compact=False).items():
            (self.run_dir / name).write_text(text)
        # A fresh deployment token per run: the workers refuse calls without it.
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")

    def build_children(self, problem: Problem, plan: Plan) -> None:
        w = problem.workload
        nodes = {n.name: n for n in self.cfg.nodes}
        endpoints: dict[str, str] = {}
        py = [sys.executable, "-c", "import sys; from tessera.cli import main; sys.exit(main())"]
        for p in plan.placement:
            node = nodes[p.server]
            wport = node.port or free_port()
            url = f"http://127.0.0.1:{wport}"
            endpoints[p.server] = url
            if node.engine == "vllm":
                argv, env = vllm_command(self.cfg, self.model_dir, wport)
                log_path = self.run_dir / f"{p.server}.log"
                self.children.append(Child(p.server, argv, log_path, f"{url}/health", env=env))
                endpoints[p.server] = endpoint(url)
                continue
            launch = WorkerLaunch(
                model=str(self.model_dir),
                blocks=(p.start, p.end),
                memory_bytes=node.memory_bytes,
                name=p.server,
                host="127.0.0.1",
                port=wport,
                max_length=w.max_input_tokens + w.max_output_tokens,
                dtype=self.cfg.model.dtype,
                max_batch_tokens=self.cfg.max_batch_tokens,
                batch_invariant=self.cfg.batch_invariant,
                threads=self.cfg.threads_per_worker,
                speed_factor=node.speed_factor,
                delay_s=node.delay_s,
                bandwidth_mbit_s=node.bandwidth_mbit_s,
                token_file=str(self.token_path),
                log_level="warning",
            )
            argv = py + launch.argv(joined=True)
            self.children.append(
                Child(p.server, argv, self.run_dir / f"{p.server}.log", f"{url}/readyz")
            )
        self.write_files(problem, plan, endpoints)
        token = self.token_path.read_text().strip()
        for child in self.children:
            if child.env is not None:  # vLLM requires the deployment token on its /v1 routes
                child.env[API_KEY_ENV] = token
        files = PlanFiles.in_dir(self.run_dir)
        router = RouterLaunch(
            plan=str(files.plan),
            problem=str(files.problem),
            endpoints=str(files.endpoints),
            model_name=self.cfg.model.name,
            tokenizer=str(self.model_dir),
            host=self.cfg.router.host,
            port=self.port,
            client=ROUTER_CLIENT,
            max_wait_s=self.cfg.router.max_wait_s,
            max_queue=self.cfg.router.max_queue,
            down_s=self.cfg.router.down_s,
            failover_timeout_s=self.cfg.router.failover_timeout_s,
            step_timeout_s=self.cfg.router.step_timeout_s,
            straggler_floor_s=self.cfg.router.straggler_floor_s,
            straggler_multiple=self.cfg.router.straggler_multiple,
            hedge_budget=self.cfg.router.hedge_budget,
            worker_token_file=str(self.token_path),
            log_level="warning",
            api_keys_file=self.cfg.router.api_keys_file,
            wire_dtypes=tuple(self.wire_dtypes.items()),
        )
        router_argv = py + router.argv(joined=True)
        self.children.append(
            Child(
                "router",
                router_argv,
                self.run_dir / "router.log",
                f"http://127.0.0.1:{self.port}/readyz",  # a complete chain is up
            )
        )

    # --- run ----------------------------------------------------------------------------------
    def run(self) -> int:
        problem, plan = self.plan()
        from tessera.placement.report import render_table

        self.out(plan_summary(render_table(problem, plan, None), problem, plan))
        for line in self.wire_lines(problem):
            self.out(line)
        self.out("")
        self.build_children(problem, plan)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for child in self.children:
                child.start()
            self.out(
                f"starting {len(self.children) - 1} stage processes and the router "
                f"(logs in {self.run_dir}) ..."
            )
            if not self._wait_ready():
                return 1 if not self.stopping else 0
            self._banner(plan)
            return self._supervise()
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _wait_ready(self) -> bool:
        timeout_s = READY_TIMEOUT_S
        if vllm_nodes(self.cfg):  # vLLM loads (and compiles) for minutes
            timeout_s = max(timeout_s, self.cfg.vllm.ready_timeout_s)
        deadline = time.monotonic() + timeout_s
        pending = list(self.children)
        while pending and not self.stopping:
            if self._reap() is not None:
                return False
            pending = [c for c in pending if not _ok(c.health_url)]
            if time.monotonic() > deadline:
                self.out(
                    f"tessera: not ready after {timeout_s:.0f} s: "
                    f"{', '.join(c.name for c in pending)}"
                )
                for c in pending:
                    self.out(f"--- {c.log_path} ---\n{c.log_tail()}")
                return False
            time.sleep(0.3)
        return not self.stopping

    def _banner(self, plan: Plan) -> None:
        base = f"http://127.0.0.1:{self.port}"
        model = self.cfg.model.name
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 32,
                "temperature": 0,
            }
        )
        chains = ", ".join(">".join(c) for c in plan.routes.values())
        self.out(f"ready: {model} on {len(plan.placement)} stages (chain {chains}) at {base}/v1")
        keyed = self.cfg.router.api_keys_file is not None
        auth = ' -H "Authorization: Bearer $TESSERA_API_KEY"' if keyed else ""
        sdk_key = "os.environ['TESSERA_API_KEY']" if keyed else "'unused'"
        self.out("")
        if keyed:
            self.out(f"API keys required (from {self.cfg.router.api_keys_file}):")
            self.out("export TESSERA_API_KEY=<one of its keys>")
        else:
            self.out(
                "open: no API key needed (to require keys, set router.api_keys_file in the "
                "pool file to a file with one key per line)"
            )
        self.out("")
        self.out("try it:")
        self.out(
            f"curl -s {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d '{body}'"
        )
        self.out("")
        self.out("or with the OpenAI SDK (pip install openai):")
        self.out(
            'python -c "import os; from openai import OpenAI; '
            f"c = OpenAI(base_url='{base}/v1', api_key={sdk_key}); "
            f"r = c.chat.completions.create(model='{model}', max_tokens=32, "
            "messages=[{'role': 'user', 'content': 'What is the capital of France?'}]); "
            'print(r.choices[0].message.content)"'
        )
        self.out("")
        self.out("Ctrl-C stops everything.")

    def _reap(self) -> Child | None:
        """Handle dead children; the child that keeps dying when we must give up, else None."""
        now = time.monotonic()
        for c in self.children:
            if c.alive() or self.stopping:
                continue
            if c.restart_at is None:  # just died
                c.signal_group(signal.SIGKILL)  # what it left behind, before a new one starts
                code = c.proc.returncode if c.proc else None
                c.deaths = [t for t in c.deaths if now - t < DEATH_WINDOW_S] + [now]
                if len(c.deaths) >= MAX_DEATHS:
                    self.out(
                        f"tessera: {c.name} died {len(c.deaths)} times in "
                        f"{DEATH_WINDOW_S:.0f} s (last exit code {code}); giving up.\n"
                        f"--- last lines of {c.log_path} ---\n{c.log_tail()}"
                    )
                    return c
                backoff = min(2.0 ** (len(c.deaths) - 1), 30.0)
                self.out(
                    f"tessera: {c.name} exited with code {code}; restarting in {backoff:.0f} s"
                )
                c.restart_at = now + backoff
            elif now >= c.restart_at:
                c.start()
        return None

    def _supervise(self) -> int:
        while not self.stopping:
            if self._reap() is not None:
                return 1
            time.sleep(0.3)
        self.out("stopping ...")
        return 0

    def stop_all(self) -> None:
        self.stopping = True
        live = [c for c in self.children if c.alive()]
        for c in reversed(live):  # the router first, so no new work reaches the stages
            c.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for c in live:
            try:
                c.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                c.proc.kill()  # type: ignore[union-attr]
                c.proc.wait()  # type: ignore[union-attr]
        for c in self.children:  # anything a child left behind (an orphaned vLLM engine)
            c.signal_group(signal.SIGKILL)
