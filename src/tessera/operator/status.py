"""The LLMDeployment status as a pure function of what the reconcile saw and decided."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tessera.api.crd import Condition, LLMDeploymentStatus, Phase, PlanStatus, StageStatus
from tessera.placement import Plan

from .inventory import Inventory
from .rollout import covers


@dataclass(frozen=True)
class KeyCheck:
    """The router's API keys as the operator found them (condition `Authenticated`)."""

    ok: bool
    reason: str  # ApiKeys, NoApiKeySecret (open), SecretNotFound, KeyNotFound
    message: str

    @property
    def blocking(self) -> bool:
        """The router cannot start until the user creates the Secret or the key."""
        return self.reason in ("SecretNotFound", "KeyNotFound")


def check_api_keys(
    secret: str | None, key: str, namespace: str, found: frozenset[str] | None
) -> KeyCheck:
    """`found`: the data keys of the Secret named in spec.router.apiKeySecret (None: missing)."""
    if secret is None:
        return KeyCheck(
            False,
            "NoApiKeySecret",
            "spec.router.apiKeySecret is not set: the router accepts requests without a key",
        )
    if found is None:
        return KeyCheck(
            False,
            "SecretNotFound",
            f'spec.router.apiKeySecret: Secret "{secret}" not found in namespace "{namespace}"; '
            "the router waits for it (it never starts without its keys)",
        )
    if key not in found:
        return KeyCheck(
            False,
            "KeyNotFound",
            f'spec.router.apiKeySecretKey: Secret "{secret}" has no key "{key}"; '
            "the router waits for it (it never starts without its keys)",
        )
    return KeyCheck(True, "ApiKeys", f'client API keys from Secret "{secret}", key "{key}"')


@dataclass(frozen=True)
class Observed:
    """What one reconcile pass found and decided."""

    generation: int | None
    target: Plan
    inventory: Inventory
    deployed: Mapping[str, tuple[int, int]]  # after this pass's changes
    ready: frozenset[str]
    router_ready: bool
    endpoint: str
    decision: str  # this pass's (for the message)
    plan_reason: str  # why the plan is what it is: its last change's reason (Planned condition)
    moved: bool  # this pass adopted a new plan (its stages are starting)
    keys: KeyCheck
    unschedulable: tuple[tuple[str, str], ...] = ()  # (pod, the scheduler's message)


def _condition(
    previous: Sequence[Mapping[str, Any]], type_: str, ok: bool, reason: str, message: str, now: str
) -> Condition:
    status: Literal["True", "False"] = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old.get("lastTransitionTime", now) if old and old.get("status") == status else now
    return Condition(
        type=type_, status=status, reason=reason, message=message, last_transition_time=since
    )


def _was_serving(previous: Mapping[str, Any]) -> bool:
    """Ready before, or Degraded after being Ready (not Degraded only for want of API keys)."""
    phase = previous.get("phase")
    return phase == "Ready" or (phase == "Degraded" and not waiting_for_keys(previous))


def compute(obs: Observed, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    """Phase, conditions and plan summary. `previous` is the current status (for transitions)."""
    conds = previous.get("conditions") or []
    target = obs.target
    num_blocks = obs.inventory.problem.num_blocks
    in_plan = {p.server for p in target.placement}
    ready_in_plan = sorted(in_plan & obs.ready)
    all_ready = len(ready_in_plan) == len(in_plan) and obs.router_ready
    serving = covers(num_blocks, (obs.deployed[s] for s in obs.ready if s in obs.deployed))
    rolled_out = all(obs.deployed.get(p.server) == (p.start, p.end) for p in target.placement)
    phase: Phase
    if all_ready and rolled_out:
        phase = "Ready"
    elif _was_serving(previous) and rolled_out and not obs.moved:
        phase = "Degraded"
    else:
        phase = "Deploying"
    message = f"{len(ready_in_plan)}/{len(in_plan)} stages ready; {obs.decision}"
    stuck = ""
    if obs.unschedulable:
        pod, why = obs.unschedulable[0]
        more = f" (and {len(obs.unschedulable) - 1} more)" if len(obs.unschedulable) > 1 else ""
        stuck = f"; pod {pod} cannot be scheduled: {why}{more}"
        message += stuck
    if obs.keys.blocking:
        phase, message = "Degraded", f"{obs.keys.message}; {message}"
    stages = []
    for p in target.placement:
        info = obs.inventory.server(p.server)
        stages.append(
            StageStatus(
                server=p.server,
                node=info.node,
                gpu_class=info.gpu_class,
                start=p.start,
                blocks=p.blocks,
                ready=p.server in obs.ready,
            )
        )
    pred = target.predicted
    per_token = pred.per_token_s if pred else None
    plan = PlanStatus(
        solver=target.solver,
        predicted_per_token_seconds=per_token,
        predicted_first_token_seconds=pred.first_token_s if pred else None,
        concurrent_requests=target.statistics.concurrent_requests,
        stages=stages,
    )
    conditions = [
        _condition(conds, "Planned", True, "PlanFound", obs.plan_reason, now),
        _condition(
            conds,
            "StagesReady",
            len(ready_in_plan) == len(in_plan),
            "AllStagesReady"
            if len(ready_in_plan) == len(in_plan)
            else ("Unschedulable" if obs.unschedulable else "StagesStarting"),
            f"{len(ready_in_plan)}/{len(in_plan)} stage pods ready{stuck}",
            now,
        ),
        _condition(
            conds,
            "Available",
            serving and obs.router_ready,
            "CompleteChain" if serving and obs.router_ready else "NoCompleteChain",
            "ready stages cover every block" if serving else "some blocks have no ready stage",
            now,
        ),
        _condition(conds, "Authenticated", obs.keys.ok, obs.keys.reason, obs.keys.message, now),
        _condition(conds, "Ready", phase == "Ready", phase, message, now),
    ]
    status = LLMDeploymentStatus(
        phase=phase,
        message=message,
        observed_generation=obs.generation,
        stages=len(in_plan),
        ready_stages=len(ready_in_plan),
        predicted_per_token_seconds=per_token,
        endpoint=obs.endpoint,
        plan=plan,
        conditions=conditions,
    )
    return status.model_dump(by_alias=True, exclude_none=True)


def failed(
    reason: str, message: str, previous: Mapping[str, Any], generation: int | None, now: str
) -> dict[str, Any]:
    """Failed: the spec is invalid or the pool cannot hold the model. Existing stages stay."""
    conds = previous.get("conditions") or []
    conditions = [
        _condition(conds, "Planned", False, reason, message, now),
        _condition(conds, "Ready", False, "Failed", message, now),
    ]
    status = LLMDeploymentStatus(
        phase="Failed",
        message=message,
        observed_generation=generation,
        stages=int(previous.get("stages", 0) or 0),
        ready_stages=int(previous.get("readyStages", 0) or 0),
        endpoint=previous.get("endpoint"),
        conditions=conditions,
    )
    return status.model_dump(by_alias=True, exclude_none=True)


def planning(previous: Mapping[str, Any], generation: int | None, now: str) -> dict[str, Any]:
    conds = previous.get("conditions") or []
    status = LLMDeploymentStatus(
        phase="Planning",
        message="solving the placement",
        observed_generation=generation,
        conditions=[_condition(conds, "Planned", False, "Planning", "solving", now)],
    )
    return status.model_dump(by_alias=True, exclude_none=True)


def waiting_for_keys(status: Mapping[str, Any]) -> bool:
    """The router waits for its API key Secret (the operator re-checks it soon)."""
    return any(
        c.get("type") == "Authenticated" and c.get("reason") in ("SecretNotFound", "KeyNotFound")
        for c in status.get("conditions") or []
    )
