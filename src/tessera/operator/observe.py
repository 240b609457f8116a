"""Observe: every read one reconcile pass makes, into one frozen snapshot.

`read_cr` parses the LLMDeployment as it arrived (no I/O); `observe` adds what the cluster says
(nodes, GPU holders, the API key Secret's keys, the children, unschedulable pods). `plan.py`
decides from the snapshot alone; nothing else reads the cluster during a pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tessera.api.crd import LLMDeploymentSpec, check_name
from tessera.errors import InvalidInput

from .manifests import Owner

if TYPE_CHECKING:  # plan.py imports this module, and kube.py imports plan.py
    from .kube import Kube

MAX_ERRORS = 5
Obj = Mapping[str, Any]  # an object as the API server returned it (JSON)
CHILD_KINDS = ("Deployment", "Service", "ConfigMap", "NetworkPolicy")


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


@dataclass(frozen=True)
class Cr:
    """The LLMDeployment of this pass, parsed: its identity, spec and current status."""

    owner: Owner
    generation: int | None
    spec: LLMDeploymentSpec
    status: Obj  # as read: the recorded plan and the conditions' transition times
    deleting: bool  # deletionTimestamp set: the garbage collector removes the children


def read_cr(body: Obj) -> Cr:
    """The CR from its body; InvalidInput for a name or spec the children could not carry."""
    meta = body["metadata"]
    owner = Owner(meta["name"], meta["namespace"], meta["uid"])
    name_problem = check_name(owner.name)
    if name_problem is not None:
        raise InvalidInput("metadata.name", name_problem)
    return Cr(
        owner=owner,
        generation=meta.get("generation"),
        spec=parse_spec(body.get("spec")),
        status=MappingProxyType(dict(body.get("status") or {})),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _no_children() -> Mapping[str, tuple[Obj, ...]]:
    return MappingProxyType({k: () for k in CHILD_KINDS})


@dataclass(frozen=True)
class Snapshot:
    """What the cluster said to one pass (the mappings inside are the server's JSON, unchanged)."""

    cr: Cr
    nodes: tuple[Obj, ...] = ()
    # Every tessera-managed Deployment and every live pod, cluster-wide: who holds which GPU.
    gpu_deployments: tuple[Obj, ...] = ()
    gpu_pods: tuple[Obj, ...] = ()
    # The data keys of spec.router.apiKeySecret (never the values); None: missing or not named.
    api_key_secret_keys: frozenset[str] | None = None
    children: Mapping[str, tuple[Obj, ...]] = field(default_factory=_no_children)
    unschedulable: tuple[tuple[str, str], ...] = ()  # (pod, the scheduler's message)


def observe(kube: Kube, cr: Cr) -> Snapshot:
    """All the reads of one pass. A CR being deleted needs none: nothing is planned for it."""
    if cr.deleting:
        return Snapshot(cr)
    ns = cr.owner.namespace
    deployments, pods = kube.gpu_holders()
    nodes = kube.list_nodes()
    secret = cr.spec.router.api_key_secret
    keys = None if secret is None else kube.secret_keys(ns, secret)
    children = kube.children(ns, cr.owner.name)
    return Snapshot(
        cr=cr,
        nodes=tuple(nodes),
        gpu_deployments=tuple(deployments),
        gpu_pods=tuple(pods),
        api_key_secret_keys=keys,
        children=MappingProxyType({k: tuple(children.get(k, ())) for k in CHILD_KINDS}),
        unschedulable=tuple(kube.unschedulable(ns, cr.owner.name)),
    )
