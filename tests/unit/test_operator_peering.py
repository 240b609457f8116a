"""Issue 10, row 11: one operator writes at a time (kopf peering; our resync loop obeys it)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from tessera.operator import handlers, peering

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def _rec(priority: int, age_s: float, lifetime_s: int = 60) -> dict[str, Any]:
    seen = NOW - datetime.timedelta(seconds=age_s)
    return {"priority": priority, "lifetime": lifetime_s, "lastseen": seen.isoformat()}


def test_only_the_single_live_top_priority_leads() -> None:
    status = {"a": _rec(200, 1), "b": _rec(100, 1)}
    assert peering.leading(status, 200, NOW)
    assert not peering.leading(status, 100, NOW)


def test_a_tie_at_the_top_pauses_everyone_as_kopf_does() -> None:
    status = {"a": _rec(200, 1), "b": _rec(200, 2)}
    assert not peering.leading(status, 200, NOW)


def test_an_expired_leader_hands_over() -> None:
    status = {"a": _rec(200, 61), "b": _rec(100, 1)}
    assert peering.leading(status, 100, NOW)


def test_not_leading_before_our_own_record_is_written() -> None:
    assert not peering.leading({}, 100, NOW)
    assert not peering.leading({"x": "garbage", "b": {"priority": 1}}, 100, NOW)


class _Kube:
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.asked: list[tuple[str, str | None]] = []

    def peering_status(self, name: str, namespace: str | None) -> dict[str, Any]:
        self.asked.append((name, namespace))
        return self.status


def test_the_resync_loop_writes_only_while_leading(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.datetime.now(datetime.UTC)
    fresh = {"priority": 200, "lifetime": 60, "lastseen": now.isoformat()}
    kube = _Kube({"other": fresh, "me": {**fresh, "priority": 100}})
    monkeypatch.setattr(handlers, "_kube", lambda: kube)
    monkeypatch.setattr(handlers.STATE, "peering", peering.Peering("tessera", 100, ("a", "b")))
    assert not handlers._may_write()
    assert kube.asked == [("tessera", "a")]  # all() stops at the first namespace that says no
    kube.status = {"me": {**fresh, "priority": 100}}
    assert handlers._may_write()
    monkeypatch.setattr(handlers.STATE, "peering", None)  # standalone: always
    assert handlers._may_write()


def test_the_cli_runs_kopf_with_peering_and_a_random_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kopf

    from tessera.cli import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kw: calls.append(kw))
    monkeypatch.setattr(handlers.STATE, "peering", None)
    assert main(["operator", "--peering", "tessera"]) == 0
    assert main(["operator", "--peering", "tessera"]) == 0
    assert main(["operator"]) == 0
    first, second, alone = calls
    assert first["peering_name"] == "tessera" and first["standalone"] is False
    assert first["priority"] != second["priority"]  # replicas never tie (2**31 choices)
    assert alone["standalone"] is True and alone["peering_name"] is None
