"""The e2e suite skips without a cluster, so CI checks here what its fixtures build: the client
configuration from E2E_KUBECONFIG (kopf's login and the operator's `configure()` both find it,
although the client was imported long before), and the pods of the Pod Security test."""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterator

import kopf
import kubernetes
import pytest

from tests.e2e.fixtures import client_configured, image_env, restricted_pods

SERVER = "https://e2e-apiserver.invalid:6443"


@pytest.fixture
def kubeconfig(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "e2e.kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: e2e, cluster: {{server: "{SERVER}", insecure-skip-tls-verify: true}}}}]
users: [{{name: e2e, user: {{token: e2e-token}}}}]
contexts: [{{name: e2e, context: {{cluster: e2e, user: e2e, namespace: default}}}}]
current-context: e2e
"""
    )
    return path


@pytest.fixture
def client_imported_elsewhere(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The state a fixture meets: the client imported with no KUBECONFIG (so its default path is
    a file that does not exist here), not in a cluster; the default client configuration is
    restored afterwards."""
    import kubernetes.config.kube_config as kube_config

    nowhere = str(tmp_path / "no-such-kubeconfig")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", nowhere)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # a pod's, with no token file
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    saved = kubernetes.client.Configuration.get_default_copy()
    try:
        yield
    finally:
        kubernetes.client.Configuration.set_default(saved)


def test_setting_the_variable_alone_is_the_old_defect(
    kubeconfig: pathlib.Path, client_imported_elsewhere: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(kubernetes.config.ConfigException):
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]


def test_kopf_login_and_the_operator_configure_use_e2e_kubeconfig(
    kubeconfig: pathlib.Path, client_imported_elsewhere: None
) -> None:
    from tessera.operator import handlers

    with client_configured(str(kubeconfig), {"TESSERA_WORKER_IMAGE": "reg/w:1"}):
        logger = logging.getLogger("test")
        info = kopf.login_via_client(logger=logger, settings=kopf.OperatorSettings())
        assert info is not None
        assert (info.server, info.token) == (SERVER, "e2e-token")
        handlers.configure(settings=kopf.OperatorSettings())
        assert kubernetes.client.Configuration.get_default_copy().host == SERVER
        assert os.environ["TESSERA_WORKER_IMAGE"] == "reg/w:1"
    assert "KUBECONFIG" not in os.environ and "TESSERA_WORKER_IMAGE" not in os.environ
    assert os.environ["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"  # restored as it was


def test_image_env_maps_only_the_images_given() -> None:
    env = {"E2E_WORKER_IMAGE": "reg/w:2", "E2E_ROUTER_IMAGE": "", "PATH": "/bin"}
    assert image_env(env) == {"TESSERA_WORKER_IMAGE": "reg/w:2"}


def test_the_pod_security_test_builds_a_stage_and_a_router_pod() -> None:
    pods = restricted_pods("ns1")
    assert [p["metadata"]["name"] for p in pods] == ["pss-n1-g0", "pss-router"]
    for pod in pods:
        assert pod["metadata"]["namespace"] == "ns1"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"] for v in pod["spec"]["volumes"]}
        assert "worker-token" in volumes
    assert "api-keys" in {v["name"] for v in pods[1]["spec"]["volumes"]}
