"""One reconcile pass for one LLMDeployment: read, plan, decide, build, apply, report.

Idempotent: it derives everything from the cluster (the CR, the Nodes, the labelled children),
so running it twice, or after an operator restart, changes nothing the second time. Errors are
mapped in `handlers.py`; this module raises tessera.errors and lets API errors through.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tessera.api.crd import LLMDeploymentSpec, check_name
from tessera.errors import Infeasible, InvalidInput
from tessera.placement import Plan, Problem, plan_from_dict, problem_to_dict, solve

from . import inventory, manifests, manifests_vllm, rollout, status
from .kube import Kube

EventSink = Callable[[str, str, str], None]  # (type Normal|Warning, reason, message)
CACHE_SIZE = 64
# The plan ConfigMap's data, at most: half the 1 MiB object limit (maxGPUs <= 1024 stays under).
PLAN_BYTES_LIMIT = 512 * 1024


MAX_ERRORS = 5


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the user wrote it: spec.nodePool.classes[0].memoryBytes."""
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_spec(raw: Any) -> LLMDeploymentSpec:
    """The spec, or InvalidInput naming the first bad field (and the others in the message)."""
    try:
        return LLMDeploymentSpec.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        errors = exc.errors()
        msgs = [f"{field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in errors]
        first, _, first_msg = msgs[0].partition(": ")
        more = msgs[1:MAX_ERRORS]
        extra = f" (more than {MAX_ERRORS} errors)" if len(msgs) > MAX_ERRORS else ""
        raise InvalidInput(first, "; ".join([first_msg, *more]) + extra) from None


class PlanCache:
    """Solutions by problem content: node events that change nothing relevant cost no solve."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._items: OrderedDict[str, Plan] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def solve(self, problem: Problem, spec: LLMDeploymentSpec) -> Plan:
        p = spec.placement
        key = json.dumps(
            [problem_to_dict(problem), p.solver, p.seed, p.time_limit_seconds, p.max_gpus]
        )
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        plan = solve(
            problem,
            p.solver,
            seed=p.seed,
            time_limit_s=p.time_limit_seconds,
            max_servers=p.max_gpus,
        )
        with self._lock:
            self._items[key] = plan
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return plan


@dataclass(frozen=True)
class Settings:
    images: manifests.Images


class TokenMemo:
    """LLMDeployment uids whose worker-token Secret is known to exist: one create per operator
    start (or per full resync, which forgets), not one per pass."""

    def __init__(self) -> None:
        self._uids: set[str] = set()
        self._lock = threading.Lock()

    def __contains__(self, uid: object) -> bool:
        with self._lock:
            return uid in self._uids

    def add(self, uid: str) -> None:
        with self._lock:
            self._uids.add(uid)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._uids.discard(uid)


def ensure_worker_token(kube: Kube, owner: manifests.Owner, memo: TokenMemo) -> None:
    """Create `<name>-worker-token` once. An existing one is kept as it is (never rotated), so
    running stages and the router keep agreeing after a re-plan or an operator restart."""
    if owner.uid in memo:
        return
    kube.create_once(manifests.worker_token_secret(owner, secrets.token_urlsafe(32)))
    memo.add(owner.uid)


def is_ready(dep: Mapping[str, Any]) -> bool:
    st = dep.get("status") or {}
    gen = dep.get("metadata", {}).get("generation")
    observed = st.get("observedGeneration")
    fresh = gen is None or observed is None or observed >= gen
    return fresh and int(st.get("readyReplicas") or 0) >= 1


def _blocks(dep: Mapping[str, Any]) -> tuple[int, int] | None:
    raw = (dep.get("metadata", {}).get("annotations") or {}).get(manifests.BLOCKS_ANNOTATION, "")
    start, _, end = raw.partition(":")
    return (int(start), int(end)) if start.isdigit() and end.isdigit() else None


def reconcile(
    kube: Kube,
    body: Mapping[str, Any],
    settings: Settings,
    cache: PlanCache,
    now: str,
    emit: EventSink,
    tokens: TokenMemo | None = None,
) -> dict[str, Any]:
    """Bring the children in line with the spec and the nodes; return the status written."""
    meta = body["metadata"]
    owner = manifests.Owner(meta["name"], meta["namespace"], meta["uid"])
    generation = meta.get("generation")
    previous = body.get("status") or {}
    name_problem = check_name(owner.name)
    if name_problem is not None:
        raise InvalidInput("metadata.name", name_problem)
    spec = parse_spec(body.get("spec"))
    if previous.get("phase") in (None, "Pending"):
        kube.patch_status(owner.namespace, owner.name, status.planning(previous, generation, now))
    holders, pods = kube.gpu_holders()
    taken = inventory.claimed(
        holders, pods, owner.uid, (manifests.MANAGED_BY_LABEL, manifests.MANAGED_BY)
    )
    inv = inventory.build(spec, kube.list_nodes(), taken)
    fresh = cache.solve(inv.problem, spec)
    if not fresh.feasible:
        raise Infeasible(fresh.reason or "the pool cannot hold the model")

    ensure_worker_token(kube, owner, tokens if tokens is not None else TokenMemo())
    key_secret = spec.router.api_key_secret
    found = None if key_secret is None else kube.secret_keys(owner.namespace, key_secret)
    keys = status.check_api_keys(key_secret, spec.router.api_key_secret_key, owner.namespace, found)
    children = kube.children(owner.namespace, owner.name)
    existing = {(k, o["metadata"]["name"]): o for k, objs in children.items() for o in objs}
    stages: dict[str, Mapping[str, Any]] = {}
    for dep in children["Deployment"]:
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
    step = rollout.rollout_step(inv.problem.num_blocks, deployed, ready, target)
    after = {s: r for s, r in deployed.items() if s not in step.delete}
    after |= {s: target[s] for s in step.apply}

    concurrency = int(decision.target.stats.get("concurrent_requests", 1))
    if after == target:
        serving = decision.target
    else:  # mid-rollout: publish what is deployed, so the router only uses existing stages
        serving = rollout.evaluate(inv.problem, after, concurrency, decision.target.solver)
        if not serving.feasible:
            serving = decision.target
    images = settings.images
    if spec.images.worker or spec.images.router:
        images = manifests.Images(
            spec.images.worker or images.worker,
            spec.images.router or images.router,
            spec.images.pull_policy,
            images.vllm,
        )
    vllm = manifests_vllm.vllm_servers(spec, inv.problem, decision.target)
    desired = [
        manifests_vllm.vllm_stage_deployment(
            owner, spec, inv.server(s), inv.problem, images, manifests_vllm.image_of(spec, images)
        )
        if s in vllm
        else manifests.stage_deployment(owner, spec, inv.server(s), r, inv.problem, images)
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

    target_ranges = rollout.ranges_of(decision.target)
    if target_ranges != recorded:  # every plan change, stages lost included
        emit("Normal", "Planned", _change(reason, previous, decision.target))
    router = existing.get(("Deployment", manifests.router_name(owner)))
    obs = status.Observed(
        generation=generation,
        target=decision.target,
        inventory=inv,
        deployed=after,
        ready=frozenset(ready & (set(after) - set(step.apply))),
        router_ready=router is not None and is_ready(router),
        endpoint=manifests.endpoint(owner),
        decision=reason,
        moved=decision.moved,
        keys=keys,
        unschedulable=tuple(kube.unschedulable(owner.namespace, owner.name)),
    )
    new_status = status.compute(obs, previous, now)
    old_reason = next(
        (
            c.get("reason")
            for c in previous.get("conditions") or []
            if c.get("type") == "Authenticated"
        ),
        None,
    )
    if not keys.ok and old_reason != keys.reason:  # once per change, not per pass
        emit(
            "Warning",
            "OpenEndpoint" if keys.reason == "NoApiKeySecret" else keys.reason,
            keys.message,
        )
    # The status says what this pass is about to do before it does it: a long create reads
    # Deploying, and a rejection below turns it into Failed.
    if _differs(previous, new_status):
        kube.patch_status(owner.namespace, owner.name, new_status)
    # Start new stages before anything is removed.
    for obj in desired:
        kube.apply(obj, existing.get((obj["kind"], obj["metadata"]["name"])))
    keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
    for kind, name in sorted(existing):
        if (kind, name) not in keep and kind in ("Deployment", "Service", "NetworkPolicy"):
            kube.delete(kind, owner.namespace, name)
    return new_status


def _recorded(previous: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
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


def _change(reason: str, previous: Mapping[str, Any], new: Plan) -> str:
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


def _published_plan(cm: Mapping[str, Any] | None) -> Plan | None:
    raw = ((cm or {}).get("data") or {}).get("plan.json")
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


def _differs(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(previous.get(k) != v for k, v in new.items())


def report_failure(
    kube: Kube, body: Mapping[str, Any], reason: str, message: str, now: str
) -> bool:
    """Write the Failed status; False when it already said exactly this."""
    meta = body["metadata"]
    previous = body.get("status") or {}
    new_status = status.failed(reason, message, previous, meta.get("generation"), now)
    if not _differs(previous, new_status):
        return False
    kube.patch_status(meta["namespace"], meta["name"], new_status)
    return True
