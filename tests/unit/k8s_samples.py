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


def hardening_problems(pod: dict[str, Any]) -> list[str]:
    """What makes a pod spec less than hardened: non-root, read-only root filesystem, no
    privilege escalation, no capabilities, RuntimeDefault seccomp, writable paths on emptyDir.
    Container settings win over the pod's, as in Kubernetes. Empty list: hardened."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("pod shares a host namespace")
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for c in [*(pod.get("initContainers") or []), *pod["containers"]]:
        name = c["name"]
        sc = {**pod_sc, **(c.get("securityContext") or {})}
        if sc.get("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runs as UID 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: privilege escalation not disabled")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        caps = sc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"] or caps.get("add"):
            problems.append(f"{name}: capabilities not dropped to none: {caps}")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccomp profile is not RuntimeDefault")
        for m in c.get("volumeMounts") or []:
            vol = volumes.get(m["name"])
            if vol is None:
                problems.append(f"{name}: mount {m['name']} has no volume")
            elif not m.get("readOnly") and "emptyDir" not in vol:
                problems.append(f"{name}: writable mount {m['mountPath']} is not an emptyDir")
            if m.get("subPath") and "secret" in (vol or {}):
                problems.append(f"{name}: Secret {m['name']} by subPath is never updated")
        if not any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts") or []):
            problems.append(f"{name}: no writable /tmp")
    return problems
