"""Issue 10, rows 1, 4 and 5: a rejection or a bug in one pass ends in Failed with the reason,
never an endless Planning, and the resync goes on to the next LLMDeployment."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from tessera.operator import handlers
from tessera.operator.kube import Rejected


class _Kube:
    def __init__(self) -> None:
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str]] = []

    def get_llmd(self, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": namespace, "uid": f"u-{name}"}}

    def list_llmds(self) -> list[dict[str, Any]]:
        return [self.get_llmd("default", n) for n in ("a-bad", "b-good")]

    def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append((name, status))

    def event(self, body: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> _Kube:
    fake = _Kube()
    monkeypatch.setattr(handlers, "_kube", lambda: fake)
    return fake


def test_an_api_rejection_is_failed_with_the_servers_message_and_field(
    kube: _Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reconcile(*_: Any) -> Any:
        raise Rejected("ConfigMap x-plan: data", "the API server answered 422: Too long")

    monkeypatch.setattr(handlers, "reconcile", reconcile)
    with pytest.raises(kopf.PermanentError):  # no retry every 2 s
        handlers.run("default", "x")
    ((_, status),) = kube.statuses
    assert status["phase"] == "Failed"
    assert status["message"] == "ConfigMap x-plan: data: the API server answered 422: Too long"
    planned = next(c for c in status["conditions"] if c["type"] == "Planned")
    assert planned["reason"] == "Rejected"
    assert kube.events == [("Rejected", status["message"])]


def test_one_crs_bug_never_stops_the_others_in_a_resync(
    kube: _Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def reconcile(_kube: Any, body: Any, *_: Any) -> dict[str, Any]:
        seen.append(body["metadata"]["name"])
        if body["metadata"]["name"] == "a-bad":
            raise OverflowError("math range error")
        return {"phase": "Ready"}

    monkeypatch.setattr(handlers, "reconcile", reconcile)
    handlers._resync(set(), full=True)
    assert seen == ["a-bad", "b-good"]
    ((name, status),) = kube.statuses
    assert name == "a-bad" and status["phase"] == "Failed"
    assert "OverflowError: math range error" in status["message"]
