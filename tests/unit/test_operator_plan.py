"""Issue 14: the operator's plan step, a pure function of a snapshot, tested without any API
server or emulator. `_World` carries an outcome out the way the API server would keep it (the
objects as written, the status as patched), so that several passes can follow each other."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from tessera.errors import Infeasible, InvalidInput
from tessera.operator import manifests, settings
from tessera.operator.observe import CHILD_KINDS, Cr, Snapshot, observe, read_cr
from tessera.operator.plan import Outcome, plan, planning_status
from tessera.operator.reconcile import PlanCache

from .k8s_samples import node

SETTINGS = settings.Settings(manifests.Images("w:1", "r:1"))
CACHE = PlanCache()
NOW = "2026-11-29T00:00:00Z"
SPEC: dict[str, Any] = {
    "model": {
        "name": "llama",
        "source": {"pvc": "models"},
        "architecture": {"preset": "llama-70b"},
    },
    "workload": {"concurrentRequests": 4},
    "nodePool": {"selector": {"matchLabels": {"tessera.dev/pool": "p"}}},
}


def _body(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    md = {"name": "m", "namespace": "default", "uid": "u-m", "generation": 1, **meta}
    return {"metadata": md, "spec": copy.deepcopy(spec or SPEC)}


@dataclass
class _World:
    """What the API server holds after each pass: the CR's status, its children, the nodes."""

    body: dict[str, Any] = field(default_factory=_body)
    nodes: list[dict[str, Any]] = field(
        default_factory=lambda: [node(f"a100-{i}") for i in range(4)]
    )
    children: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        items = sorted(self.children.items())
        return Snapshot(
            cr=read_cr(self.body),
            nodes=tuple(self.nodes),
            children={k: tuple(o for (kind, _), o in items if kind == k) for k in CHILD_KINDS},
        )

    def plan(self) -> Outcome:
        return plan(self.snapshot(), SETTINGS, CACHE.solve, NOW)

    def carry_out(self, out: Outcome) -> None:
        if out.write_status:
            self.body["status"] = copy.deepcopy(dict(out.status))
        for item in out.apply:
            obj = {k: v for k, v in copy.deepcopy(item.obj).items() if k not in ("apiVersion",)}
            old = self.children.get((obj["kind"], obj["metadata"]["name"]))
            gen = (old or {}).get("metadata", {}).get("generation", 0) + 1
            obj["metadata"]["generation"] = gen
            obj["status"] = (old or {}).get("status", {})
            self.children[(obj["kind"], obj["metadata"]["name"])] = obj
        for kind, name in out.delete:
            del self.children[(kind, name)]

    def mark_ready(self) -> None:
        for (kind, _), obj in self.children.items():
            if kind == "Deployment":
                gen = obj["metadata"]["generation"]
                obj["status"] = {"readyReplicas": 1, "observedGeneration": gen}

    def stages(self) -> dict[str, str]:
        """server -> its stage Deployment's blocks annotation."""
        out = {}
        for (kind, _), obj in self.children.items():
            ann = obj["metadata"].get("annotations") or {}
            if kind == "Deployment" and manifests.SERVER_ANNOTATION in ann:
                out[ann[manifests.SERVER_ANNOTATION]] = ann[manifests.BLOCKS_ANNOTATION]
        return out


def _applied(out: Outcome) -> list[tuple[str, str]]:
    return sorted((a.obj["kind"], a.obj["metadata"]["name"]) for a in out.apply)


def _deployed(world: _World) -> _World:
    """A world where the first plan is carried out and every stage is ready."""
    world.carry_out(world.plan())
    world.mark_ready()
    world.carry_out(world.plan())
    assert world.body["status"]["phase"] == "Ready"
    return world


def _planned(status: Any) -> str:
    """The Planned condition's message."""
    (planned,) = [c for c in status["conditions"] if c["type"] == "Planned"]
    message: str = planned["message"]
    return message


def _plan_servers(status: dict[str, Any]) -> list[str]:
    return [s["server"] for s in status["plan"]["stages"]]


def test_create_plans_every_child_and_the_status_and_says_why() -> None:
    world = _World()
    cr = read_cr(world.body)
    assert planning_status(cr, NOW)["phase"] == "Planning"  # type: ignore[index]
    out = world.plan()
    servers = _plan_servers(dict(out.status))
    assert out.status["phase"] == "Deploying" and out.write_status and out.worker_token
    stage_names = [manifests.stage_name(cr.owner, s) for s in servers]
    assert _applied(out) == sorted(
        [("Deployment", n) for n in stage_names]
        + [("Service", n) for n in stage_names]
        + [
            ("ConfigMap", "m-plan"),
            ("Deployment", "m-router"),
            ("Service", "m-router"),
            ("NetworkPolicy", "m-stages"),
            ("NetworkPolicy", "m-router"),
        ]
    )
    assert all(a.existing is None for a in out.apply) and out.delete == ()
    # Deletion is the garbage collector's: every child is owned by the CR.
    for a in out.apply:
        (ref,) = a.obj["metadata"]["ownerReferences"]
        assert ref["uid"] == "u-m" and ref["kind"] == "LLMDeployment"
    planned, open_endpoint = out.events
    assert planned.reason == "Planned" and planned.message.startswith("initial plan; stages 0 -> ")
    assert "per-token none -> " in planned.message
    assert (open_endpoint.type, open_endpoint.reason) == ("Warning", "OpenEndpoint")
    assert out.status["plan"]["concurrentRequests"] == 4  # the plan's own, typed


def test_the_plan_is_pure_and_a_second_pass_changes_nothing() -> None:
    world = _World()
    snap = world.snapshot()
    before = copy.deepcopy(snap.nodes)
    assert plan(snap, SETTINGS, CACHE.solve, NOW) == plan(snap, SETTINGS, CACHE.solve, NOW)
    assert snap.nodes == before
    world.carry_out(world.plan())
    again = world.plan()  # the decision now reads "plan unchanged": that is all it writes
    assert (again.apply, again.delete, again.events) == ((), (), ())
    assert again.status["message"].endswith("plan unchanged")
    assert _planned(again.status) == "initial plan"  # why the plan is what it is
    world.carry_out(again)
    third = world.plan()
    assert (third.apply, third.delete, third.events, third.write_status) == ((), (), (), False)
    assert planning_status(read_cr(world.body), NOW) is None  # Planning only before a first plan


def test_ready_stages_turn_the_status_ready_without_writing_a_child() -> None:
    world = _World()
    world.carry_out(world.plan())
    world.mark_ready()
    out = world.plan()
    assert out.status["phase"] == "Ready" and out.write_status
    assert out.apply == () and out.delete == () and out.events == ()


def test_a_lost_node_replans_names_the_stage_and_removes_its_children() -> None:
    world = _deployed(_World())
    old = world.body["status"]
    lost = old["plan"]["stages"][0]
    world.nodes = [n for n in world.nodes if n["metadata"]["name"] != lost["node"]]
    out = world.plan()
    (planned,) = [e for e in out.events if e.reason == "Planned"]
    assert f"lost 1 stage(s) ({lost['server']})" in planned.message
    old_ms = f"{old['plan']['predictedPerTokenSeconds'] * 1000:.1f} ms"
    assert f"stages {len(old['plan']['stages'])} -> " in planned.message
    assert f"per-token {old_ms} -> " in planned.message  # the old and the new figure
    assert lost["server"] not in _plan_servers(dict(out.status))
    name = manifests.stage_name(read_cr(world.body).owner, lost["server"])
    assert ("Deployment", name) in out.delete and ("Service", name) in out.delete
    # The stages left are ready and cover every block: still Ready, now on fewer stages.
    assert out.write_status and out.status["stages"] == len(old["plan"]["stages"]) - 1
    # The Planned condition keeps saying why after the next pass, as the Event did (Events expire).
    world.carry_out(out)
    later = world.plan()
    assert f"lost 1 stage(s) ({lost['server']})" not in later.status["message"]  # this pass's
    assert _planned(later.status).startswith(f"lost 1 stage(s) ({lost['server']})")


def test_a_spec_change_replans_with_the_old_and_new_figures() -> None:
    world = _deployed(_World())
    old_stages = len(world.body["status"]["plan"]["stages"])
    world.body["spec"]["placement"] = {"maxGPUs": 2}
    world.body["metadata"]["generation"] = 2
    out = world.plan()
    (planned,) = out.events
    assert planned.message.startswith(f"re-planned: {old_stages} stages, over the bound of 2")
    assert f"stages {old_stages} -> 2" in planned.message
    assert "per-token none" not in planned.message
    assert out.status["observedGeneration"] == 2 and len(out.status["plan"]["stages"]) == 2


def test_scale_down_deletes_the_surplus_children_without_breaking_every_chain() -> None:
    world = _deployed(_World())
    world.body["spec"]["placement"] = {"maxGPUs": 2}
    for _ in range(5):  # a rollout may take a few passes; each keeps a complete chain
        out = world.plan()
        world.carry_out(out)
        world.mark_ready()
        if not out.apply and not out.delete:
            break
    kept = _plan_servers(world.body["status"])
    assert len(kept) == 2 and sorted(world.stages()) == sorted(kept)
    owner = read_cr(world.body).owner
    names = {name for (kind, name) in world.children if kind in ("Deployment", "Service")}
    assert names == {manifests.stage_name(owner, s) for s in kept} | {"m-router"}
    assert world.body["status"]["phase"] == "Ready"


def test_a_cr_being_deleted_plans_nothing_and_reads_nothing() -> None:
    body = {**_body(), "status": {"phase": "Ready"}}
    body["metadata"]["deletionTimestamp"] = NOW
    cr = read_cr(body)

    class _NoReads:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"read {name} for a CR being deleted")

    snap = observe(_NoReads(), cr)  # type: ignore[arg-type]
    out = plan(snap, SETTINGS, CACHE.solve, NOW)
    assert out == Outcome(cr.owner, cr.status)  # no status, no child, no event, no token
    assert not out.worker_token and planning_status(cr, NOW) is None


def test_hand_edits_are_repaired_and_nothing_else_is_rewritten() -> None:
    world = _deployed(_World())
    stage = next(k for k in sorted(world.children) if k[1] != "m-router" and k[0] == "Deployment")
    live = world.children[stage]
    live["spec"]["replicas"] = 3
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    out = world.plan()
    (item,) = out.apply
    assert (item.obj["kind"], item.obj["metadata"]["name"]) == stage
    assert item.existing is live and item.obj["spec"]["replicas"] == 1
    assert out.delete == () and out.events == ()


def test_a_deleted_stage_is_recreated_from_the_recorded_plan() -> None:
    world = _deployed(_World())
    status = world.body["status"]
    stage = next(k for k in sorted(world.children) if k[1] != "m-router" and k[0] == "Deployment")
    del world.children[stage]
    out = world.plan()
    assert [(a.obj["kind"], a.obj["metadata"]["name"], a.existing) for a in out.apply] == [
        (*stage, None)
    ]
    assert not any(e.reason == "Planned" for e in out.events)  # the plan is the same one
    assert _plan_servers(dict(out.status)) == _plan_servers(status)
    assert out.status["phase"] == "Degraded"  # still serving on the other chain


def test_an_unknown_extra_child_of_ours_is_deleted_but_the_plan_configmap_kept() -> None:
    world = _deployed(_World())
    extra = copy.deepcopy(world.children[("Service", "m-router")])
    extra["metadata"]["name"] = "m-old-stage"
    world.children[("Service", "m-old-stage")] = extra
    out = world.plan()
    assert out.delete == (("Service", "m-old-stage"),) and out.apply == ()


def test_no_usable_gpu_and_a_bad_name_are_errors_not_plans() -> None:
    world = _World(nodes=[node("cpu-0", product=None, allocatable={})])
    with pytest.raises(Infeasible):
        world.plan()
    with pytest.raises(InvalidInput) as exc:
        read_cr(_body(name="x" * 80))
    assert exc.value.field == "metadata.name"


def test_the_operators_images_and_the_specs_own() -> None:
    world = _World()
    out = world.plan()
    images = {
        c["image"]
        for a in out.apply
        if a.obj["kind"] == "Deployment"
        for c in a.obj["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"w:1", "r:1"}
    world.body["spec"]["images"] = {"worker": "mine/w:2"}
    other = world.plan()
    workers = {
        a.obj["spec"]["template"]["spec"]["containers"][0]["image"]
        for a in other.apply
        if a.obj["kind"] == "Deployment" and a.obj["metadata"]["name"] != "m-router"
    }
    assert workers == {"mine/w:2"}


def test_settings_are_parsed_once_from_the_environment_and_name_a_bad_variable() -> None:
    got = settings.from_env(
        {"TESSERA_WORKER_IMAGE": "reg/w:3", "TESSERA_RESYNC_SECONDS": "5", "OTHER": "x"}
    )
    assert got.reconcile.images.worker == "reg/w:3"
    assert got.reconcile.images.router == settings.DEFAULT_ROUTER_IMAGE
    assert got.reconcile.images.vllm is None
    assert (got.resync_s, got.recheck_s, got.tick_s) == (5.0, 10.0, 5.0)
    for bad in ({"TESSERA_RECHECK_SECONDS": "soon"}, {"TESSERA_RECHECK_SECONDS": "0"}):
        with pytest.raises(InvalidInput) as exc:
            settings.from_env(bad)
        assert exc.value.field == "TESSERA_RECHECK_SECONDS"


def test_a_cr_without_status_is_read_as_an_empty_one() -> None:
    cr: Cr = read_cr(_body())
    assert dict(cr.status) == {} and cr.generation == 1 and not cr.deleting
