"""The real operator (KopfRunner) with `stages.engine: vllm`: the server that holds the whole
model with room for its share runs vLLM's server, the others Tessera's worker, and the router
is told which is which (endpoints.json)."""

from __future__ import annotations

import json

from conftest import Cluster, gpu_node, llmd, wait_for
from kopf.testing import KopfRunner

LLAMA_8B = {
    "name": "llama-8b",
    "source": {"pvc": "models", "path": "llama"},
    "architecture": {"preset": "llama-8b"},
}


def test_a_full_replica_runs_vllm_beside_worker_stages(cluster: Cluster) -> None:
    cluster.add_node(gpu_node("h100", "NVIDIA-H100-80GB-HBM3"))
    for name in ("t4-1", "t4-2"):  # too small for the whole model with room: a split chain
        cluster.add_node(gpu_node(name, "Tesla-T4"))
    body = llmd(
        "mv",
        model=LLAMA_8B,
        workload={"maxInputTokens": 2048, "maxOutputTokens": 512, "concurrentRequests": 8},
        stages={"engine": "vllm"},
        images={"vllm": "registry.example/vllm-openai:1"},
    )
    args = ["run", "-A", "--standalone", "-m", "tessera.operator.handlers"]
    with KopfRunner(args, timeout=30) as runner:
        cluster.create(body)
        st = wait_for(lambda: cluster.status("mv").get("plan") and cluster.status("mv"))
        n_stages = st["stages"]
        deps = wait_for(
            lambda: len(cluster.deployments("mv")) == n_stages + 1 and cluster.deployments("mv")
        )
        cm = wait_for(lambda: cluster.configmaps("mv").get("mv-plan"))
    assert runner.exception is None, runner.output
    stages = {
        d.metadata.annotations["tessera.dev/server"]: d
        for d in deps.values()
        if d.metadata.labels["app.kubernetes.io/component"] == "stage"
    }
    engines = {s: d.spec.template.spec.containers[0].name for s, d in stages.items()}
    assert engines.pop("h100-g0") == "vllm"
    assert engines and set(engines.values()) == {"worker"}
    vllm = stages["h100-g0"].spec.template.spec.containers[0]
    assert vllm.image == "registry.example/vllm-openai:1"
    assert vllm.startup_probe.http_get.path == "/health"
    assert stages["h100-g0"].metadata.annotations["tessera.dev/blocks"] == "0:32"
    endpoints = json.loads(cm.data["endpoints.json"])
    assert endpoints["h100-g0"] == "vllm+http://mv-h100-g0.default.svc:8001"
    assert all(u.startswith("http://") for s, u in endpoints.items() if s != "h100-g0")
