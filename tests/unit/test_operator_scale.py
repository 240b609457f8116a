"""Issue 10, rows 1, 2, 3 and 7: plans bounded at any pool size, the plan ConfigMap far under
the object limit, drift judged against the desired object, rejections naming the field, and
GPUs held by others left alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tessera.api.crd import DEFAULT_MAX_GPUS, MAX_GPUS
from tessera.operator import inventory, manifests, rollout
from tessera.operator.kube import Rejected, drifted, rejected
from tessera.operator.reconcile import PLAN_BYTES_LIMIT, PlanCache

from .k8s_samples import node, spec

PRODUCTS = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L40S", "NVIDIA-L4")
OWNER = manifests.Owner("big", "default", "uid-big")


def _pool(nodes: int, gpus: int) -> list[dict[str, Any]]:
    return [
        node(f"gpu-{i:04d}", PRODUCTS[i % len(PRODUCTS)], gpus=gpus, zone=f"z{i % 3}")
        for i in range(nodes)
    ]


def _plan_bytes(max_gpus: int | None) -> tuple[int, int, int]:
    placement = {} if max_gpus is None else {"maxGPUs": max_gpus}
    s = spec(workload={"concurrentRequests": 16}, placement=placement)
    inv = inventory.build(s, _pool(1000, 6))
    plan = PlanCache().solve(inv.problem, s)
    routed = rollout.restrict(inv.problem, (p.server for p in plan.placement))
    cm = manifests.plan_configmap(OWNER, routed, plan)
    return len(inv.servers), len(plan.placement), sum(len(v) for v in cm["data"].values())


def test_a_1000_node_6000_gpu_pool_gets_a_bounded_plan_far_under_the_object_limit() -> None:
    servers, stages, size = _plan_bytes(None)
    assert servers == 6000
    assert 1 <= stages <= DEFAULT_MAX_GPUS  # not one stage per GPU
    assert size < 64 * 1024  # 1 MiB is the limit


def test_the_largest_allowed_plan_still_fits_the_limit_kept_for_it() -> None:
    _, stages, size = _plan_bytes(MAX_GPUS)
    assert stages <= MAX_GPUS
    assert size < PLAN_BYTES_LIMIT < 1024 * 1024


def test_plan_files_are_compact_json_the_router_reads_unchanged() -> None:
    s = spec()
    inv = inventory.build(s, _pool(4, 1))
    plan = PlanCache().solve(inv.problem, s)
    cm = manifests.plan_configmap(OWNER, inv.problem, plan)
    for text in cm["data"].values():
        assert "\n" not in text and ", " not in text
        json.loads(text)


def test_drift_is_judged_against_everything_the_operator_sets() -> None:
    s = spec()
    inv = inventory.build(s, _pool(2, 1))
    images = manifests.Images("w:1", "r:1")
    want = manifests.stage_deployment(OWNER, s, inv.servers[0], (0, 80), images)
    live = json.loads(json.dumps(want))
    live["status"] = {"readyReplicas": 1}  # the server's own fields are not drift
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/x"
    assert not drifted(want, live)
    for edit in (
        lambda o: o["spec"].update(replicas=3),
        lambda o: o["spec"]["template"]["spec"]["containers"][0].update(image="evil:latest"),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["args"].append("--evil"),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["env"].pop(),
        lambda o: o["spec"]["template"]["spec"].pop("affinity"),
    ):
        edited = json.loads(json.dumps(live))
        edit(edited)
        assert drifted(want, edited)


def test_an_api_rejection_names_the_object_and_the_servers_field() -> None:
    exc = ApiException(status=422, reason="Unprocessable Entity")
    exc.body = json.dumps(
        {
            "message": 'ConfigMap "big-plan" is invalid: []: Too long: must have at most 1048576 bytes',
            "details": {"causes": [{"field": "[]", "message": "Too long"}]},
        }
    )
    err = rejected(exc, {"kind": "ConfigMap", "metadata": {"name": "big-plan"}})
    assert isinstance(err, Rejected)
    assert err.field == "ConfigMap big-plan: []"
    assert "422" in str(err) and "Too long" in str(err)


def _stage_dep(owner_uid: str, node_name: str, gpus: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {manifests.MANAGED_BY_LABEL: manifests.MANAGED_BY},
            "ownerReferences": [{"uid": owner_uid}],
        },
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchFields": [
                                            {
                                                "key": "metadata.name",
                                                "operator": "In",
                                                "values": [node_name],
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "containers": [
                        {"resources": {"requests": {"nvidia.com/gpu": str(gpus), "cpu": "1"}}}
                    ],
                }
            },
        },
    }


@pytest.mark.parametrize("phase", ["Running", "Pending"])
def test_gpus_held_by_other_deployments_and_pods_are_not_planned(phase: str) -> None:
    deps = [
        _stage_dep("other-uid", "n0"),
        _stage_dep("other-uid", "n0"),
        _stage_dep(OWNER.uid, "n1"),
    ]
    pods = [
        {
            "metadata": {"labels": {}},
            "spec": {
                "nodeName": "n1",
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": "3"}}}],
            },
            "status": {"phase": phase},
        },
        {  # finished: holds nothing
            "metadata": {},
            "spec": {
                "nodeName": "n1",
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}],
            },
            "status": {"phase": "Succeeded"},
        },
    ]
    taken = inventory.claimed(
        deps, pods, OWNER.uid, (manifests.MANAGED_BY_LABEL, manifests.MANAGED_BY)
    )
    assert taken == {"n0": {"nvidia.com/gpu": 2}, "n1": {"nvidia.com/gpu": 3}}
    inv = inventory.build(spec(), [node("n0", gpus=2), node("n1", gpus=4)], taken)
    assert [s.name for s in inv.servers] == ["n1-g0"]  # our own stage on n1 is not "taken"
    assert inv.excluded == (("n0", "no free nvidia.com/gpu (taken by other pods)"),)
