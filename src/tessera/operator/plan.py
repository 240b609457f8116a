"""Plan: one reconcile pass's decisions, a pure function of the snapshot and the settings.

No I/O and no clock: `now` comes in, the solver is passed in (the operator's PlanCache), and
the outcome says what `execute.py` writes: the Events, the status, the objects to create or
patch (only those that differ from the server's copy) and the children to delete. A bad spec or
an infeasible pool raises tessera.errors (the handlers write Failed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tessera.api.crd import LLMDeploymentSpec
from tessera.errors import Infeasible, InvalidInput
from tessera.placement import Plan, Problem, plan_from_dict
from tessera.placement.planset import PLAN_FILE

from . import inventory, manifests, manifests_vllm, rollout, status
from .observe import Cr, Obj, Snapshot
from .settings import Settings

Solver = Callable[[Problem, LLMDeploymentSpec], Plan]
# The plan ConfigMap's data, at most: half the 1 MiB object limit (maxGPUs <= 1024 stays under).
PLAN_BYTES_LIMIT = 512 * 1024
DELETABLE = ("Deployment", "Service", "NetworkPolicy")  # the plan ConfigMap is only rewritten


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Apply:
    obj: dict[str, Any]  # as the builders made it
    existing: Obj | None  # the server's copy (None: create)


@dataclass(frozen=True)
class Outcome:
    """What one pass writes, in this order: events, status, applies, deletes."""

    owner: manifests.Owner
    status: Mapping[str, Any]  # the status this pass computed (written when `write_status`)
    write_status: bool = False
    worker_token: bool = False  # make sure the worker-token Secret exists (created once)
    apply: tuple[Apply, ...] = ()
    delete: tuple[tuple[str, str], ...] = ()  # (kind, name)
    events: tuple[Event, ...] = ()


def drifted(desired: Any, actual: Any) -> bool:
    """Whether `actual` (from the server) differs from `desired` in anything `desired` sets.
    Keys the server adds (defaults, status, bookkeeping) are not drift; list items are compared
    position by position, so an added or removed argument is."""
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return True
        return any(k not in actual or drifted(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return True
        return any(drifted(d, a) for d, a in zip(desired, actual, strict=True))
    return bool(desired != actual)


def needs_write(obj: Mapping[str, Any], existing: Obj | None) -> bool:
    """Create or patch `obj` (list items come from the server without apiVersion and kind)."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    return existing is None or drifted(body, existing)


def is_ready(dep: Obj) -> bool:
    st = dep.get("status") or {}
    gen = dep.get("metadata", {}).get("generation")
    observed = st.get("observedGeneration")
    fresh = gen is None or observed is None or observed >= gen
    return fresh and int(st.get("readyReplicas") or 0) >= 1


def differs(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(previous.get(k) != v for k, v in new.items())


def planning_status(cr: Cr, now: str) -> dict[str, Any] | None:
    """The Planning status, written before a first solve (which may take a while); else None."""
    if cr.deleting or cr.status.get("phase") not in (None, "Pending"):
        return None
    return status.planning(cr.status, cr.generation, now)


def failure_status(
    body: Obj, reason: str, message: str, now: str
) -> tuple[manifests.Owner, dict[str, Any]] | None:
    """The Failed status for `body`, or None when its status already says exactly this."""
    meta = body["metadata"]
    previous = body.get("status") or {}
    new_status = status.failed(reason, message, previous, meta.get("generation"), now)
    if not differs(previous, new_status):
        return None
    return manifests.Owner(meta["name"], meta["namespace"], meta.get("uid", "")), new_status


def plan(snap: Snapshot, settings: Settings, solve: Solver, now: str) -> Outcome:
    """Bring the children in line with the spec and the nodes: the outcome of one pass."""
    cr = snap.cr
    owner, spec, previous = cr.owner, cr.spec, cr.status
    if cr.deleting:  # the children carry ownerReferences: the garbage collector removes them
        return Outcome(owner, previous)
    taken = inventory.claimed(
        snap.gpu_deployments,
        snap.gpu_pods,
        owner.uid,
        (manifests.MANAGED_BY_LABEL, manifests.MANAGED_BY),
    )
    inv = inventory.build(spec, snap.nodes, taken)
    fresh = solve(inv.problem, spec)
    if not fresh.feasible:
        raise Infeasible(fresh.reason or "the pool cannot hold the model")

    key_secret = spec.router.api_key_secret
    found = None if key_secret is None else snap.api_key_secret_keys
    keys = status.check_api_keys(key_secret, spec.router.api_key_secret_key, owner.namespace, found)
    existing = {(k, o["metadata"]["name"]): o for k, objs in snap.children.items() for o in objs}
    stages: dict[str, Obj] = {}
    for dep in snap.children.get("Deployment", ()):
        server = (dep["metadata"].get("annotations") or {}).get(manifests.SERVER_ANNOTATION)
        if server and _blocks(dep) is not None:
            stages[server] = dep
    present = {s.name for s in inv.servers}
    recorded = _recorded(previous)  # the last plan this operator adopted (in the status)
    # A stage of that plan whose Deployment is gone (deleted by hand, or never created when the
    # operator stopped mid-create) still belongs to it: it is re-created, not dropped.
    deployed = {s: r for s, r in recorded.items() if s in present}
    deployed |= {s: r for s, dep in stages.items() if (r := _blocks(dep)) is not None}
    ready = {s for s, dep in stages.items() if s in present and is_ready(dep)}

    decision = rollout.decide(
        inv.problem,
        deployed,
        fresh,
        spec.placement.replan_threshold,
        max_servers=spec.placement.max_gpus,
    )
    lost = sorted(s for s in recorded if s not in present)
    reason = decision.reason
    if lost:
        more = " ..." if len(lost) > 5 else ""
        reason = f"lost {len(lost)} stage(s) ({', '.join(lost[:5])}{more}): {reason}"
    target = rollout.ranges_of(decision.target)
    # The Planned condition says why the plan is what it is: the reason of its last change (the
    # one its Event told; Events expire), kept while passes change nothing.
    why = reason if target != recorded else (_planned_message(previous) or reason)
    step = rollout.rollout_step(inv.problem.num_blocks, deployed, ready, target)
    after = {s: r for s, r in deployed.items() if s not in step.delete}
    after |= {s: target[s] for s in step.apply}

    if after == target:
        serving = decision.target
    else:  # mid-rollout: publish what is deployed, so the router only uses existing stages
        concurrency = decision.target.statistics.concurrent_requests or 1  # the plan's own |R|
        serving = rollout.evaluate(inv.problem, after, concurrency, decision.target.solver)
        if not serving.feasible:
            serving = decision.target
    images = _images(spec, settings.images)
    vllm = manifests_vllm.vllm_servers(spec, inv.problem, decision.target)
    desired = [
        manifests_vllm.vllm_stage_deployment(
            owner, spec, inv.server(s), inv.problem, images, manifests_vllm.image_of(spec, images)
        )
        if s in vllm
        else manifests.stage_deployment(owner, spec, inv.server(s), r, images)
        for s, r in sorted(after.items())
        if s in present
    ]
    desired += [manifests.stage_service(owner, s) for s in sorted(after) if s in present]
    published = _published_plan(existing.get(("ConfigMap", manifests.plan_name(owner))))
    if published is not None and rollout.ranges_of(published) == rollout.ranges_of(serving):
        serving = published  # same stages: keep the published plan byte for byte (no reload)
    routed = rollout.restrict(inv.problem, (p.server for p in serving.placement))
    cm = manifests.plan_configmap(
        owner, routed, serving, manifests_vllm.endpoints_map(owner, serving, vllm)
    )
    size = sum(len(v) for v in cm["data"].values())
    if size > PLAN_BYTES_LIMIT:
        raise InvalidInput(
            "spec.placement.maxGPUs",
            f"a plan of {len(serving.placement)} stages takes {size} bytes, over the "
            f"{PLAN_BYTES_LIMIT}-byte limit kept for the plan ConfigMap; lower it",
        )
    desired.append(cm)
    net = spec.node_pool.network
    desired.append(
        manifests.router_deployment(owner, spec, images, net.zone_label, inv.router_zone)
    )
    desired.append(manifests.router_service(owner))
    if spec.network_policy.enabled:
        desired.append(manifests.stage_network_policy(owner, spec))
        desired.append(manifests.router_network_policy(owner, spec))

    events = []
    if target != recorded:  # every plan change, stages lost included
        events.append(Event("Normal", "Planned", _change(reason, previous, decision.target)))
    router = existing.get(("Deployment", manifests.router_name(owner)))
    obs = status.Observed(
        generation=cr.generation,
        target=decision.target,
        inventory=inv,
        deployed=after,
        ready=frozenset(ready & (set(after) - set(step.apply))),
        router_ready=router is not None and is_ready(router),
        endpoint=manifests.endpoint(owner),
        decision=reason,
        plan_reason=why,
        moved=decision.moved,
        keys=keys,
        unschedulable=snap.unschedulable,
    )
    new_status = status.compute(obs, previous, now)
    if not keys.ok and _condition_reason(previous, "Authenticated") != keys.reason:
        # once per change, not per pass
        warning = "OpenEndpoint" if keys.reason == "NoApiKeySecret" else keys.reason
        events.append(Event("Warning", warning, keys.message))
    keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
    return Outcome(
        owner=owner,
        status=new_status,
        write_status=differs(previous, new_status),
        worker_token=True,
        apply=tuple(
            Apply(obj, ex)
            for obj in desired
            if needs_write(obj, ex := existing.get((obj["kind"], obj["metadata"]["name"])))
        ),
        delete=tuple(key for key in sorted(existing) if key not in keep and key[0] in DELETABLE),
        events=tuple(events),
    )


def _images(spec: LLMDeploymentSpec, default: manifests.Images) -> manifests.Images:
    """The operator's images, with the ones the spec names instead."""
    if not (spec.images.worker or spec.images.router):
        return default
    return manifests.Images(
        spec.images.worker or default.worker,
        spec.images.router or default.router,
        spec.images.pull_policy,
        default.vllm,
    )


def _condition_reason(previous: Obj, type_: str) -> str | None:
    conds = previous.get("conditions") or []
    return next((c.get("reason") for c in conds if c.get("type") == type_), None)


def _planned_message(previous: Obj) -> str | None:
    """Why the recorded plan is what it is: the message of a true Planned condition."""
    conds = previous.get("conditions") or []
    planned = next((c for c in conds if c.get("type") == "Planned"), None)
    if planned is None or planned.get("status") != "True":
        return None
    message = planned.get("message")
    return message if isinstance(message, str) and message else None


def _blocks(dep: Obj) -> tuple[int, int] | None:
    raw = (dep.get("metadata", {}).get("annotations") or {}).get(manifests.BLOCKS_ANNOTATION, "")
    start, _, end = raw.partition(":")
    return (int(start), int(end)) if start.isdigit() and end.isdigit() else None


def _recorded(previous: Obj) -> dict[str, tuple[int, int]]:
    """The stage ranges of the plan in the status (server -> (start, end))."""
    out = {}
    for st in (previous.get("plan") or {}).get("stages") or []:
        try:
            start, blocks = int(st["start"]), int(st["blocks"])
        except (KeyError, TypeError, ValueError):
            continue  # not ours or damaged: the children say the rest
        out[str(st.get("server"))] = (start, start + blocks)
    return out


def _ms(seconds: Any) -> str:
    return f"{seconds * 1000:.1f} ms" if isinstance(seconds, (int, float)) else "none"


def _change(reason: str, previous: Obj, new: Plan) -> str:
    """The Planned Event: why, and the old and new predicted figures."""
    old = previous.get("plan") or {}
    pred = new.predicted
    return (
        f"{reason}; stages {len(old.get('stages') or [])} -> {len(new.placement)}, "
        f"per-token {_ms(old.get('predictedPerTokenSeconds'))} -> "
        f"{_ms(pred.per_token_s if pred else None)}, "
        f"first-token {_ms(old.get('predictedFirstTokenSeconds'))} -> "
        f"{_ms(pred.first_token_s if pred else None)}: {_summary(new)}"
    )


def _published_plan(cm: Obj | None) -> Plan | None:
    raw = ((cm or {}).get("data") or {}).get(PLAN_FILE)
    if not raw:
        return None
    try:
        return plan_from_dict(json.loads(raw))
    except (ValueError, InvalidInput):
        return None  # not ours or damaged: rewrite it


def _summary(plan: Plan) -> str:
    parts = [f"{p.server}[{p.start}:{p.end})" for p in plan.placement]
    pred = plan.predicted
    per_token = f", {pred.per_token_s * 1000:.1f} ms/token" if pred else ""
    return f"{len(parts)} stages {' '.join(parts[:8])}{' ...' if len(parts) > 8 else ''}{per_token}"
