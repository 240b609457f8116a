"""Issue 14: the operator object reads its settings once, at start-up, never during a pass."""

from __future__ import annotations

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
