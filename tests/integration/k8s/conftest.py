"""Fixtures: an emulated API server with the CRD installed, and the real operator (KopfRunner)."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest
import yaml
from k8s_emulator import EmulatorThread, write_kubeconfig

ROOT = pathlib.Path(__file__).resolve().parents[3]
CRD_PATH = ROOT / "crds" / "llmdeployment.yaml"
GROUP, VERSION, PLURAL = "tessera.dev", "v1alpha1", "llmdeployments"
NS = "default"


def wait_for(predicate: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition") -> Any:
    """Poll every 50 ms until `predicate()` is truthy; return its value."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except kubernetes.client.exceptions.ApiException as exc:
            last_exc = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last API error: {last_exc})")


def gpu_node(
    name: str,
    product: str,
    gpus: int = 1,
    zone: str = "zone-a",
    pool: str = "test",
    ready: bool = True,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "tessera.dev/pool": pool,
                "nvidia.com/gpu.product": product,
                "topology.kubernetes.io/zone": zone,
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "16", "memory": "128Gi"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def llmd(name: str, pool: str = "test", **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {
            "name": "llama-70b",
            "source": {"pvc": "models", "path": "llama"},
            "architecture": {"preset": "llama-70b"},
        },
        "workload": {"maxInputTokens": 2048, "maxOutputTokens": 512, "concurrentRequests": 4},
        "nodePool": {"selector": {"matchLabels": {"tessera.dev/pool": pool}}},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


class Cluster:
    def __init__(self, srv: EmulatorThread) -> None:
        self.srv = srv
        self.core = kubernetes.client.CoreV1Api()
        self.apps = kubernetes.client.AppsV1Api()
        self.custom = kubernetes.client.CustomObjectsApi()

    def add_node(self, node: dict[str, Any]) -> None:
        self.core.create_node(node)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, body
        )
        return out

    def get(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, name
        )
        return out

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def deployments(self, owner: str) -> dict[str, Any]:
        items = self.apps.list_namespaced_deployment(NS).items
        return {
            d.metadata.name: d
            for d in items
            if (d.metadata.labels or {}).get("tessera.dev/deployment") == owner
        }

    def services(self, owner: str) -> dict[str, Any]:
        items = self.core.list_namespaced_service(NS).items
        return {
            s.metadata.name: s
            for s in items
            if (s.metadata.labels or {}).get("tessera.dev/deployment") == owner
        }

    def configmaps(self, owner: str) -> dict[str, Any]:
        items = self.core.list_namespaced_config_map(NS).items
        return {
            c.metadata.name: c
            for c in items
            if (c.metadata.labels or {}).get("tessera.dev/deployment") == owner
        }

    def network_policies(self, owner: str) -> dict[str, Any]:
        items = kubernetes.client.NetworkingV1Api().list_namespaced_network_policy(NS).items
        return {
            p.metadata.name: p
            for p in items
            if (p.metadata.labels or {}).get("tessera.dev/deployment") == owner
        }

    def secret(self, name: str) -> Any:
        try:
            return self.core.read_namespaced_secret(name, NS)
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def applied(self, owner: str, stages: int) -> bool:
        """Every child of one pass is written: the status comes first (the pass says what it is
        about to do), the router NetworkPolicy last."""
        deps = self.deployments(owner)
        staged = [
            d for d in deps.values() if d.metadata.labels["app.kubernetes.io/component"] == "stage"
        ]
        return len(staged) == stages and f"{owner}-router" in self.network_policies(owner)

    def mark_ready(self, owner: str) -> None:
        """Play the kubelet and the Deployment controller: every child Deployment is ready."""
        for name, dep in self.deployments(owner).items():
            self.apps.patch_namespaced_deployment_status(
                name,
                NS,
                {
                    "status": {
                        "readyReplicas": 1,
                        "replicas": 1,
                        "observedGeneration": dep.metadata.generation,
                    }
                },
            )

    def events(self, reason: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(NS).items if e.reason == reason]


@pytest.fixture
def cluster(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with EmulatorThread() as srv:
        cfg = tmp_path / "kubeconfig"
        write_kubeconfig(cfg, srv.url)
        monkeypatch.setenv("KUBECONFIG", str(cfg))
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cfg))
        monkeypatch.setenv("TESSERA_RESYNC_SECONDS", "3600")
        monkeypatch.setenv("TESSERA_RECHECK_SECONDS", "0.3")
        kubernetes.config.load_kube_config(config_file=str(cfg))
        crd = yaml.safe_load(CRD_PATH.read_text())
        kubernetes.client.ApiextensionsV1Api().create_custom_resource_definition(crd)
        yield Cluster(srv)


@pytest.fixture
def operator(cluster: Cluster) -> Iterator[Any]:
    from kopf.testing import KopfRunner

    args = ["run", "-A", "--standalone", "-m", "tessera.operator.handlers"]
    with KopfRunner(args, timeout=30) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
