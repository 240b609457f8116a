"""Issue 14: the operator object reads its settings once, at start-up, never during a pass."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import kopf
import kubernetes
import pytest

from tessera.operator import handlers, peering, settings
from tessera.operator.runner import Operator


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda: None)
    yield
    handlers.STATE.start(settings.defaults())  # as at import, for the tests that follow


def test_start_up_parses_the_environment_once(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_WORKER_IMAGE", "reg/w:7")
    monkeypatch.setenv("TESSERA_RECHECK_SECONDS", "0.5")
    handlers.configure(settings=kopf.OperatorSettings())  # type: ignore[call-arg]
    assert handlers.STATE.settings.reconcile.images.worker == "reg/w:7"
    assert handlers.STATE.settings.tick_s == 0.5

    seen: list[Any] = []

    class _Kube:
        def get_llmd(self, namespace: str, name: str) -> dict[str, Any]:
            return {"metadata": {"name": name, "namespace": namespace, "uid": "u"}}

    def reconcile(_kube: Any, _body: Any, pass_settings: Any, *_: Any) -> dict[str, Any]:
        seen.append(pass_settings)
        return {"phase": "Ready"}

    op = Operator(handlers.STATE.settings, connect=_Kube, reconcile=reconcile)  # type: ignore[arg-type]
    monkeypatch.setenv("TESSERA_WORKER_IMAGE", "reg/w:8")  # too late: read at start-up only
    op.run("default", "x")
    assert [s.images.worker for s in seen] == ["reg/w:7"]


def test_a_bad_variable_stops_the_start_naming_it(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_RESYNC_SECONDS", "-1")
    with pytest.raises(kopf.PermanentError, match="TESSERA_RESYNC_SECONDS"):
        handlers.configure(settings=kopf.OperatorSettings())  # type: ignore[call-arg]


def test_a_fresh_start_forgets_the_last_runs_state_but_keeps_the_peering() -> None:
    op = Operator(settings.defaults())
    op.soon.add(("default", "x"))
    op.tokens.add("u")
    op.peering = peering.Peering("tessera", 7)
    lock = op.planning
    op.start(settings.defaults())
    assert not op.soon and "u" not in op.tokens and op.planning is not lock
    assert op.peering == peering.Peering("tessera", 7)


def test_stopping_the_resync_waits_for_its_pass_and_ends_it_between_crs() -> None:
    """A cancelled task does not stop the thread running its pass: without the wait, a pass of
    one run went on into the next start's cluster (CI saw one, against a closed API server)."""
    started, release = threading.Event(), threading.Event()
    passed: list[str] = []

    class _Kube:
        def list_llmds(self) -> list[dict[str, Any]]:
            return [{"metadata": {"namespace": "default", "name": n, "uid": n}} for n in "ab"]

        def get_llmd(self, namespace: str, name: str) -> dict[str, Any]:
            return {"metadata": {"name": name, "namespace": namespace, "uid": name}}

    def reconcile(_kube: Any, body: Any, *_: Any) -> dict[str, Any]:
        started.set()
        release.wait(10)
        passed.append(body["metadata"]["name"])
        return {"phase": "Ready"}

    fast = dataclasses.replace(settings.defaults(), resync_s=0.01, recheck_s=0.01)
    op = Operator(fast, connect=_Kube, reconcile=reconcile)  # type: ignore[arg-type]

    async def scenario() -> None:
        await op.start_resync()
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        stop = asyncio.ensure_future(op.stop_resync())
        await asyncio.sleep(0.05)
        assert not stop.done()  # it waits for the pass in flight
        release.set()
        await stop

    asyncio.run(scenario())
    assert passed == ["a"]  # "b" was never begun: the stop came first
