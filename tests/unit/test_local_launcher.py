"""`tessera up` without processes of the model: what it predicts and prints, and when it says
ready (issue 9: the first-token line was the 1024-token design point, 40x a short prompt's)."""

from __future__ import annotations

import http.server
import pathlib
import sys
import threading
import time

import pytest
import yaml

from tessera.local import launcher as launcher_mod
from tessera.local.config import (
    TYPICAL_PROMPT_TOKENS,
    build_problem,
    parse_config,
    typical_first_token_s,
)
from tessera.local.launcher import Child, Launcher, plan_summary
from tessera.modelfiles import ModelSizes
from tessera.placement import solve

REPO = pathlib.Path(__file__).resolve().parents[2]
# SmolLM2-135M in fp32, as `tessera.modelfiles.sizes` reads it from the packaged model.
SMOLLM2 = ModelSizes(
    num_blocks=30,
    hidden_size=576,
    block_bytes=14_160_384,
    cache_bytes_per_token=1536,
    embed_bytes=113_246_208,
    tied_embeddings=True,
)


@pytest.fixture(scope="module")
def local():
    cfg = parse_config(yaml.safe_load((REPO / "examples/local.yaml").read_text()))
    problem = build_problem(cfg, SMOLLM2)
    return cfg, problem, solve(problem, cfg.solver)


def test_the_printed_first_token_time_is_for_a_short_prompt_and_says_so(local):
    _cfg, problem, plan = local
    # The plan's own prediction is for a full max_input_tokens prompt (1024): seconds.
    assert problem.workload.max_input_tokens == 1024 and plan.predicted.first_token_s > 1
    short = typical_first_token_s(problem, plan)
    assert 0.1 < short < 1.0  # a first token of a short prompt: a fraction of a second
    assert typical_first_token_s(problem, plan, 1024) == pytest.approx(plan.predicted.first_token_s)
    from tessera.cli.plan import render_table

    text = plan_summary(render_table(problem, plan, None), problem, plan)
    line = next(row for row in text.splitlines() if row.startswith("predicted first"))
    assert f"{short * 1000:.1f} ms for a {TYPICAL_PROMPT_TOKENS}-token prompt" in line
    assert f"{plan.predicted.first_token_s * 1000:.1f}" not in text
    assert "predicted per-token time" in text  # the rest of the table is unchanged


def test_the_launcher_waits_on_the_routers_readiness_not_its_liveness(local, tmp_path):
    cfg, problem, plan = local
    up = Launcher(cfg, tmp_path / "model", port=18000, run_dir=tmp_path / "run", out=lambda _: None)
    up.build_children(problem, plan)
    router = up.children[-1]
    assert router.name == "router" and router.health_url == "http://127.0.0.1:18000/readyz"
    assert all(c.health_url.endswith("/readyz") for c in up.children)


class _Readiness(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        status = self.answers.pop(0) if self.answers else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_ready_is_printed_only_once_the_router_says_ready(local, tmp_path, monkeypatch):
    cfg, _problem, _plan = local
    _Readiness.answers = [503] * 5  # no complete chain for the first five probes
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readiness)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(launcher_mod.time, "sleep", lambda _s: None)
    up = Launcher(cfg, tmp_path, run_dir=tmp_path, out=lambda _: None)
    child = Child(
        "router",
        [sys.executable, "-c", "import time; time.sleep(30)"],
        tmp_path / "router.log",
        f"http://127.0.0.1:{server.server_port}/readyz",
    )
    up.children = [child]
    child.start()
    try:
        assert up._wait_ready()
        assert _Readiness.answers == []  # it kept asking until the router said ready
    finally:
        up.stop_all()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("lossy", "wire"), [(False, "float16"), (True, "int8-outlier")])
def test_a_slow_node_link_is_emulated_and_gets_a_smaller_wire(tmp_path, lossy, wire):
    data = yaml.safe_load((REPO / "examples/local.yaml").read_text())
    data["nodes"][2]["bandwidth_mbit_s"] = 10  # node-small: 1024 tokens x 2.3 kB take 1.9 s
    data["lossy_wire"] = lossy
    cfg = parse_config(data)
    problem = build_problem(cfg, SMOLLM2)
    plan = solve(problem, cfg.solver)
    up = Launcher(cfg, tmp_path / "model", port=18000, run_dir=tmp_path / "run", out=print)
    up.choose_wires(problem, plan, SMOLLM2.hidden_size)
    assert up.wire_dtypes == {"node-small": wire}
    up.build_children(problem, plan)
    argv = {c.name: c.argv for c in up.children}
    assert "--bandwidth-mbit-s=10.0" in argv["node-small"]
    assert not any(a.startswith("--bandwidth") for a in argv["node-big"])
    assert f'--wire-dtypes={{"node-small": "{wire}"}}' in argv["router"]
    assert "node-small" in up.wire_lines(problem)[0]


def test_stopping_takes_what_a_child_started_with_it(local, tmp_path):
    """A vLLM API server leaves its engine process behind when it exits: stopping `tessera up`
    must not leave such an orphan running (it held 2.4 GB after `make test-vllm`)."""
    cfg, _problem, _plan = local
    up = Launcher(cfg, tmp_path, run_dir=tmp_path, out=lambda _: None)
    pid_file = tmp_path / "grandchild.pid"
    script = (  # a grandchild that ignores SIGTERM, as an engine busy in a forward might
        "import signal, subprocess, sys, time; "
        "g = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(g.pid)); time.sleep(60)"
    )
    child = Child("vllm", [sys.executable, "-c", script], tmp_path / "vllm.log", "http://x/")
    up.children = [child]
    child.start()
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    up.stop_all()
    deadline = time.monotonic() + 10
    while _running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(grandchild)


def _running(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing
