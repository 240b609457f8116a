"""Sample Nodes and LLMDeployment specs for the operator's unit tests."""

from __future__ import annotations

from typing import Any

from tessera.api.crd import LLMDeploymentSpec


def node(
    name: str,
    product: str | None = "NVIDIA-A100-SXM4-80GB",
    gpus: int = 1,
    zone: str = "a",
    pool: str = "p",
    ready: bool = True,
    unschedulable: bool = False,
    taints: list[dict[str, str]] | None = None,
    extra_labels: dict[str, str] | None = None,
    allocatable: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = {"tessera.dev/pool": pool, "topology.kubernetes.io/zone": zone}
    if product is not None:
        labels["nvidia.com/gpu.product"] = product
    labels.update(extra_labels or {})
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {
            "allocatable": allocatable
            if allocatable is not None
            else {"nvidia.com/gpu": str(gpus)},
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "lastHeartbeatTime": "t0"}
            ],
        },
    }


def spec(**overrides: Any) -> LLMDeploymentSpec:
    raw: dict[str, Any] = {
        "model": {
            "name": "llama",
            "source": {"pvc": "models", "path": "llama"},
            "architecture": {"preset": "llama-70b"},
        },
        "workload": {"concurrentRequests": 4},
        "nodePool": {"selector": {"matchLabels": {"tessera.dev/pool": "p"}}},
    }
    for key, value in overrides.items():
        raw[key] = value
    return LLMDeploymentSpec.model_validate(raw)
