"""The Helm chart: lint, render with default and non-default values, validate every object."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .k8s_samples import hardening_problems

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tessera"
HELM = shutil.which(
    "helm", path=f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
)
K8S_VERSION = "1.35.0"
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not found (tools/get_k8s_tools.py)")

NON_DEFAULT = [
    "--set", "example.enabled=true",
    "--set", "metrics.serviceMonitor.enabled=true",
    "--set", "metrics.serviceMonitor.labels.release=prom",
    "--set", "watchNamespaces={team-a,team-b}",
    "--set", "image.operator.digest=sha256:" + "a" * 64,
    "--set", "image.worker.tag=9.9.9",
    "--set", "verbose=true",
    "--set", "priorityClassName=high",
    "--set", "imagePullSecrets[0].name=regcred",
    "--set", "serviceAccount.name=custom-sa",
    "--set", "nodeSelector.role=system",
    "--set", "networkPolicy.enabled=false",
]  # fmt: skip


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env.setdefault(var, str(ROOT / ".cache" / "helm" / var.lower()))
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=60)


def _render(*values: str) -> list[dict[str, Any]]:
    out = _helm(
        "template", "rel", str(CHART), "--namespace", "tessera-system", "--include-crds", *values
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_lint_strict(values: list[str]) -> None:
    out = _helm("lint", "--strict", str(CHART), *values)
    assert out.returncode == 0, out.stdout + out.stderr


def test_schema_rejects_unknown_and_mistyped_values() -> None:
    assert _helm("lint", "--strict", str(CHART), "--set", "bogus=1").returncode != 0
    assert _helm("lint", "--strict", str(CHART), "--set", "resyncSeconds=soon").returncode != 0
    assert (
        _helm("lint", "--strict", str(CHART), "--set", "image.pullPolicy=Sometimes").returncode != 0
    )


def _crd_validator() -> jsonschema.Draft4Validator:
    crd = yaml.safe_load((ROOT / "crds" / "llmdeployment.yaml").read_text())
    return jsonschema.Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_rendered_objects_are_valid_kubernetes(values: list[str]) -> None:
    docs = _render(*values)
    kinds = sorted(d["kind"] for d in docs)
    for doc in docs:
        if doc["kind"] == "LLMDeployment":
            _crd_validator().validate(doc)
        elif doc["kind"] == "ServiceMonitor":  # a Prometheus Operator CRD: check what we rely on
            assert doc["spec"]["endpoints"][0]["port"] == "http"
            assert doc["metadata"]["labels"]["release"] == "prom"
        elif doc["kind"] in ("ClusterKopfPeering", "KopfPeering"):  # kopf's, shipped in crds/
            assert doc["apiVersion"] == "kopf.dev/v1"
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    base = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
    ]
    # One peering object: cluster-wide by default, one per watched namespace otherwise.
    extra = (
        ["LLMDeployment", "ServiceMonitor", "KopfPeering", "KopfPeering"]
        if values
        else ["NetworkPolicy", "ClusterKopfPeering"]
    )
    assert kinds == sorted(base + extra)


def test_operator_deployment_runs_tessera_operator_non_root() -> None:
    docs = _render(*NON_DEFAULT)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["tessera"] and c["args"][0] == "operator"
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    assert c["image"] == "ghcr.io/tessera-dev/tessera-operator@sha256:" + "a" * 64
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TESSERA_WORKER_IMAGE"] == "ghcr.io/tessera-dev/tessera-worker:9.9.9"
    assert env["TESSERA_ROUTER_IMAGE"] == "ghcr.io/tessera-dev/tessera-router:0.1.0"
    assert env["TESSERA_VLLM_IMAGE"] == "vllm/vllm-openai:v0.11.0"  # vLLM's tag, not ours
    assert hardening_problems(pod) == []
    assert pod["serviceAccountName"] == "custom-sa"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_rbac_is_least_privilege() -> None:
    role = next(d for d in _render() if d["kind"] == "ClusterRole")
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                grants[(group, res)] = set(rule["verbs"])
    assert "*" not in json.dumps(role)
    assert grants[("", "nodes")] == {"get", "list", "watch"}
    assert grants[("tessera.dev", "llmdeployments/status")] >= {"patch"}
    assert "delete" not in grants[("tessera.dev", "llmdeployments")]
    assert grants[("apps", "deployments")] >= {"create", "patch", "delete", "watch"}
    # Pods are read (GPUs other workloads hold, scheduler reasons), never written.
    assert grants[("", "pods")] == {"get", "list"}
    # The worker token is created, the API key Secret looked at; never listed, watched or changed.
    assert grants[("", "secrets")] == {"get", "create"}
    assert grants[("networking.k8s.io", "networkpolicies")] >= {"create", "patch", "delete"}
    assert grants[("", "events")] == {"create", "patch"}
    assert grants[("kopf.dev", "clusterkopfpeerings")] == {"get", "list", "watch", "patch"}


def test_replicas_share_a_peering_object() -> None:
    docs = _render("--set", "replicas=3")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    peering = next(d for d in docs if d["kind"] == "ClusterKopfPeering")
    assert f"--peering={peering['metadata']['name']}" in c["args"]
    assert _helm("lint", "--strict", str(CHART), "--set", "replicas=0").returncode != 0


def test_crd_ships_in_crds_dir_identical_to_the_top_level_one() -> None:
    shipped = (CHART / "crds" / "llmdeployment.yaml").read_text()
    assert shipped == (ROOT / "crds" / "llmdeployment.yaml").read_text()
    crd = next(
        d
        for d in _render()
        if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "tessera.dev"
    )
    assert crd == yaml.safe_load(shipped)
    assert not list((CHART / "templates").glob("*crd*")), (
        "a templated CRD would be deleted on uninstall"
    )


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if (
            not stripped
            or stripped.startswith("#")
            or stripped.startswith("-")
            or ":" not in stripped
        ):
            continue
        key = stripped.split(":")[0]
        prev = lines[i - 1].strip() if i else ""
        parent_only = stripped.endswith(":") and key in {
            "image",
            "serviceAccount",
            "rbac",
            "metrics",
            "example",
            "requests",
            "limits",
        }
        if not prev.startswith("#") and not parent_only:
            undocumented.append(f"line {i + 1}: {key}")
    assert undocumented == []


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_operator_pod_is_hardened(values: list[str]) -> None:
    dep = next(d for d in _render(*values) if d["kind"] == "Deployment")
    assert hardening_problems(dep["spec"]["template"]["spec"]) == []


def test_operator_network_policy_denies_all_ingress_to_the_operator_pod_only() -> None:
    docs = _render()
    pol = next(d for d in docs if d["kind"] == "NetworkPolicy")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = pol["spec"]["podSelector"]["matchLabels"]
    assert selector and all(pod_labels.get(k) == v for k, v in selector.items())
    assert pol["spec"]["policyTypes"] == ["Ingress"] and pol["spec"]["ingress"] == []
    assert pol["metadata"]["namespace"] == "tessera-system"
