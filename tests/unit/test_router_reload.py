"""Plan reload on in-process fake stages: the router re-reads plan, problem and endpoints files
swapped in the way Kubernetes updates a ConfigMap volume (`..data` symlink), sends new requests
by the new plan, lets a running request finish on its old chain, and ignores (and logs) a set
of files that does not fit together."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import threading
import time

from fastapi.testclient import TestClient

from tessera.placement import plan_from_dict, plan_to_dict, problem_to_dict
from tessera.placement.perf import chain_hops, decode_s_per_token, first_token_s
from tessera.router.app import RouterConfig, build_app
from tessera.router.reload import PlanFiles
from tessera.router.tokenizer import Tokenizer

from .datapath_helpers import smollm2_dir
from .router_fakes import LAYOUT, MODEL, FakeStage, fake_pool, problem_and_plan

NEW = 8
ABC = {"routes": {"router": ["a", "b", "c"]}, "servers": ("a", "b", "c", "a2", "c2")}
SPARE = {"routes": {"router": ["a2", "c2"]}, "servers": ("a2", "c2")}


def _documents(layout: dict) -> tuple[dict, dict, dict]:
    problem, plan = problem_and_plan()
    plan_doc = plan_to_dict(plan)  # type: ignore[arg-type]
    plan_doc["placement"] = [
        {"server": n, "start": a, "blocks": b - a}
        for n, (a, b) in LAYOUT.items()
        if n in layout["servers"]
    ]
    plan_doc["routes"] = layout["routes"]
    plan_doc["stats"] = {"concurrent_requests": 4}  # `validate` wants the plan's concurrency
    plan_doc.pop("predicted", None)
    bare = plan_from_dict(plan_doc)
    if bare.placement and all(s in layout["servers"] for s in layout["routes"]["router"]):
        placed = {p.server: p for p in bare.placement}
        hops = chain_hops(problem, placed, bare.routes["router"])  # type: ignore[arg-type]
        plan_doc["predicted"] = {  # what `validate` recomputes from the routes
            "per_token_s": decode_s_per_token(problem, 0, hops),  # type: ignore[arg-type]
            "first_token_s": first_token_s(problem, 0, hops),  # type: ignore[arg-type]
        }
    endpoints = {n: f"http://fake-{n}" for n in layout["servers"]}
    return problem, plan_doc, endpoints  # type: ignore[return-value]


def _publish(root: pathlib.Path, version: str, plan_doc: dict, endpoints: dict) -> None:
    """Write a version directory and point `..data` at it atomically, as the kubelet does."""
    problem, _, _ = _documents(ABC)
    d = root / version
    d.mkdir()
    (d / "problem.json").write_text(json.dumps(problem_to_dict(problem)))
    (d / "plan.json").write_text(json.dumps(plan_doc))
    (d / "endpoints.json").write_text(json.dumps(endpoints))
    tmp = root / "..data_tmp"
    tmp.symlink_to(version)
    os.replace(tmp, root / "..data")
    for name in ("problem.json", "plan.json", "endpoints.json"):
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")


def _app(
    root: pathlib.Path,
    stages: dict[str, FakeStage],
    poll_interval_s: float = 0.05,
    layout: dict = ABC,
):
    problem, plan_doc, endpoints = _documents(layout)
    _publish(root, "v1", plan_doc, endpoints)
    config = RouterConfig(
        problem,  # type: ignore[arg-type]
        plan_from_dict(plan_doc),
        endpoints,
        MODEL,
        Tokenizer(smollm2_dir()),
        stage_clients=stages,  # type: ignore[arg-type]
        poll_interval_s=poll_interval_s,
        plan_files=PlanFiles(root / "plan.json", root / "problem.json", root / "endpoints.json"),
        reload_interval_s=0.05,
    )
    return build_app(config)


def _wait(cond, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _complete(c: TestClient) -> tuple[str, str]:
    body = {"model": MODEL, "prompt": "The sea is", "max_tokens": NEW, "temperature": 0}
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.headers["x-tessera-chain"], r.json()["choices"][0]["text"]


def test_new_requests_use_the_reloaded_plan_and_a_running_one_keeps_its_chain(tmp_path):
    stages = fake_pool()
    gate = threading.Event()
    original = stages["c"].step

    # c pauses mid-answer until the gate
    async def held(session_id, x, position, sampling, wire_dtype=None):
        if stages["c"].steps >= 3:
            while not gate.is_set():
                await asyncio.sleep(0.01)
        return await original(session_id, x, position, sampling, wire_dtype)

    stages["c"].step = held  # type: ignore[method-assign]
    app = _app(tmp_path, stages)
    with TestClient(app) as c:
        reloader = app.state.tessera_reloader
        result: list[tuple[str, str]] = []
        running = threading.Thread(target=lambda: result.append(_complete(c)))
        running.start()
        try:
            _wait(lambda: stages["c"].steps >= 3 and stages["c"].sessions, "the request to run")
            _, plan_doc, endpoints = _documents(SPARE)
            _publish(tmp_path, "v2", plan_doc, endpoints)
            _wait(lambda: reloader.reloads == 1, "the reload")
            assert stages["c"].sessions  # the running request is still on a>b>c
        finally:
            gate.set()  # else a failure above hangs the app's shutdown on the held request
            running.join(timeout=30)
        old_chain, old_text = result[0]
        assert old_chain == "a>b>c"  # it finished where it started: no failover
        new_chain, new_text = _complete(c)
        assert new_chain == "a2>c2" and new_text == old_text
        assert "b" not in c.get("/health").json()["stages_up"]
        chains = app.state.tessera.chains
        _wait(
            lambda: stages["b"] not in chains.directory.stage_clients(),
            "the retired clients to close",
        )
    assert all(not s.sessions for s in stages.values())


def test_an_invalid_set_is_logged_and_ignored(tmp_path, caplog):
    stages = fake_pool()
    app = _app(tmp_path, stages)
    with TestClient(app) as c, caplog.at_level(logging.ERROR, logger="tessera.router"):
        reloader = app.state.tessera_reloader
        # b alone leaves blocks 0-10 and 20-30 uncovered: the plan does not fit.
        _, plan_doc, endpoints = _documents({"routes": {"router": ["b"]}, "servers": ("b",)})
        _publish(tmp_path, "v2", plan_doc, endpoints)
        _wait(lambda: reloader.rejected == 1, "the refusal")
        assert "keeping the old plan" in caplog.text
        assert _complete(c)[0] == "a>b>c"

        _, plan_doc, _ = _documents(SPARE)  # endpoints naming servers not in the plan
        _publish(tmp_path, "v3", plan_doc, {"a": "http://fake-a", "a2": "http://fake-a2"})
        _wait(lambda: reloader.rejected == 2, "the second refusal")
        assert "servers not in the plan" in caplog.text
        assert _complete(c)[0] == "a>b>c" and reloader.reloads == 0


def test_new_stages_are_polled_before_the_switch(tmp_path):
    """No 'no complete chain' gap: the reload itself asks the new stages for their state."""
    only_abc = {"routes": {"router": ["a", "b", "c"]}, "servers": ("a", "b", "c")}
    # a2 and c2 are new to the router, and the periodic poll never comes.
    app = _app(tmp_path, fake_pool(), poll_interval_s=3600, layout=only_abc)
    with TestClient(app) as c:
        _, plan_doc, endpoints = _documents(SPARE)
        _publish(tmp_path, "v2", plan_doc, endpoints)
        _wait(lambda: app.state.tessera_reloader.reloads == 1, "the reload")
        assert sorted(c.get("/health").json()["stages_up"]) == ["a2", "c2"]
        assert _complete(c)[0] == "a2>c2"
