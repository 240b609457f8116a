"""Issue 10, row 8: the status says what a pass is about to do before it writes the children."""

from __future__ import annotations

from typing import Any

from tessera.operator import manifests
from tessera.operator.reconcile import PlanCache, Settings, TokenMemo, reconcile

from .k8s_samples import node


class _RecordingKube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append(("status", status.get("phase")))

    def gpu_holders(self) -> tuple[list[Any], list[Any]]:
        return [], []

    def list_nodes(self) -> list[dict[str, Any]]:
        return [node(f"a100-{i}") for i in range(4)]

    def create_once(self, obj: dict[str, Any]) -> bool:
        self.calls.append(("create_once", obj["kind"]))
        return True

    def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        return None

    def children(self, namespace: str, owner: str) -> dict[str, list[dict[str, Any]]]:
        return {"Deployment": [], "Service": [], "ConfigMap": [], "NetworkPolicy": []}

    def apply(self, obj: dict[str, Any], existing: Any) -> bool:
        self.calls.append(("apply", obj["kind"]))
        return True

    def delete(self, kind: str, ns: str, name: str) -> None:
        self.calls.append(("delete", kind))

    def unschedulable(self, namespace: str, owner: str) -> list[tuple[str, str]]:
        return []


def test_deploying_with_the_plan_is_written_before_any_child() -> None:
    kube = _RecordingKube()
    body = {
        "metadata": {"name": "m", "namespace": "default", "uid": "u", "generation": 1},
        "spec": {
            "model": {
                "name": "llama",
                "source": {"pvc": "models"},
                "architecture": {"preset": "llama-70b"},
            },
            "nodePool": {"selector": {"matchLabels": {"tessera.dev/pool": "p"}}},
        },
    }
    events: list[tuple[str, str, str]] = []
    settings = Settings(manifests.Images("w", "r"))
    reconcile(kube, body, settings, PlanCache(), "t", lambda *e: events.append(e), TokenMemo())  # type: ignore[arg-type]
    statuses = [i for i, (kind, _) in enumerate(kube.calls) if kind == "status"]
    applies = [i for i, (kind, _) in enumerate(kube.calls) if kind == "apply"]
    assert [kube.calls[i][1] for i in statuses] == ["Planning", "Deploying"]
    assert statuses[-1] < applies[0]  # the status first, then the children
    assert [e[1] for e in events] == ["Planned", "OpenEndpoint"]  # no apiKeySecret given
    assert "stages 0 -> " in events[0][2] and "per-token none -> " in events[0][2]
