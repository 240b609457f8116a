"""Pure builders: plan + inventory + spec -> Kubernetes manifests (plain dicts).

Every object carries an owner reference to its LLMDeployment (deletion is Kubernetes' garbage
collection, no finalizer) and the labels `app.kubernetes.io/*` and `tessera.dev/deployment`.
Each builder is one small function. The command lines are `tessera.api.launch` values, the
plan ConfigMap a `tessera.placement.planset` set. Every pod runs non-root with a read-only root filesystem, no privilege
escalation, no capabilities and the RuntimeDefault seccomp profile; its writable paths (/tmp,
the model conversion cache) are emptyDir volumes. Secrets are mounted as volumes (not env, not
subPath) so that the router sees a rotated API key file without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.api.crd import GROUP, KIND, VERSION, IngressPeer, LLMDeploymentSpec
from tessera.api.launch import RouterLaunch, WorkerLaunch
from tessera.placement import Plan, Problem
from tessera.placement.planset import PlanFiles, PlanSet

from .inventory import ServerInfo

WORKER_PORT = 8001
ROUTER_PORT = 8000
MODEL_MOUNT = "/models"
PLAN_MOUNT = "/etc/tessera"
CACHE_MOUNT = "/var/cache/tessera"  # TESSERA_CACHE: where a packaged model is converted once
TOKEN_MOUNT = "/var/run/secrets/tessera/worker-token"
TOKEN_KEY = "token"
TOKEN_FILE = f"{TOKEN_MOUNT}/{TOKEN_KEY}"
API_KEYS_MOUNT = "/var/run/secrets/tessera/api-keys"
API_KEYS_FILE = f"{API_KEYS_MOUNT}/keys"
SECRET_MODE = 0o440  # owner root, group fsGroup (the pod's user): read only
RUN_AS_USER = 10001
MANAGED_BY = "tessera-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
DEPLOYMENT_LABEL = f"{GROUP}/deployment"
SERVER_ANNOTATION = f"{GROUP}/server"
BLOCKS_ANNOTATION = f"{GROUP}/blocks"
HASH_ANNOTATION = f"{GROUP}/spec-hash"
MAX_NAME = 52  # leaves room for ReplicaSet and Pod suffixes within 63 characters


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Images:
    worker: str
    router: str
    pull_policy: str = "IfNotPresent"
    vllm: str | None = None  # full-replica stages (engine: vllm); None: manifests_vllm's default


def dns_name(*parts: str) -> str:
    """A DNS-1035 label (Service names need one) from parts, hashed when too long."""
    raw = "-".join(parts).lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    if not name or not name[0].isalpha():
        name = f"t-{name}"
    if len(name) > MAX_NAME or name != raw:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
    return name


def stage_name(owner: Owner, server: str) -> str:
    return dns_name(owner.name, server)


def router_name(owner: Owner) -> str:
    return dns_name(owner.name, "router")


def plan_name(owner: Owner) -> str:
    return dns_name(owner.name, "plan")


def worker_token_name(owner: Owner) -> str:
    return dns_name(owner.name, "worker-token")


def endpoint(owner: Owner) -> str:
    return f"http://{router_name(owner)}.{owner.namespace}.svc:{ROUTER_PORT}/v1"


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tessera",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "tessera",
        MANAGED_BY_LABEL: MANAGED_BY,
        DEPLOYMENT_LABEL: owner.name,
    }


def _metadata(owner: Owner, name: str, component: str, **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def spec_hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp the object's content hash, so that applying an unchanged object is a no-op."""
    obj["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = spec_hash(obj)
    return obj


def model_path(spec: LLMDeploymentSpec) -> str:
    src = spec.model.source
    if src.package is not None:
        return f"package:{src.package}"  # installed in the image; the CLI's spelling
    sub = src.path.strip("/")
    return f"{MODEL_MOUNT}/{sub}" if sub else MODEL_MOUNT


def model_volumes(spec: LLMDeploymentSpec, pull_policy: str) -> list[dict[str, Any]]:
    src = spec.model.source
    if src.pvc is not None:
        return [
            {"name": "model", "persistentVolumeClaim": {"claimName": src.pvc, "readOnly": True}}
        ]
    if src.host_path is not None:
        return [{"name": "model", "hostPath": {"path": src.host_path, "type": "Directory"}}]
    if src.image is not None:  # an OCI image volume (Kubernetes >= 1.33 with ImageVolume)
        return [{"name": "model", "image": {"reference": src.image, "pullPolicy": pull_policy}}]
    return []


def _mounts(spec: LLMDeploymentSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_MOUNT},
        {"name": "worker-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
    ]
    if spec.model.source.package is None:
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    return mounts


def _volumes(owner: Owner, spec: LLMDeploymentSpec, pull_policy: str) -> list[dict[str, Any]]:
    """The writable scratch space, the worker token and the weights, for every pod."""
    token = {
        "secretName": worker_token_name(owner),
        "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
        "defaultMode": SECRET_MODE,
    }
    return [
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "worker-token", "secret": token},
        *model_volumes(spec, pull_policy),
    ]


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env() -> list[dict[str, str]]:
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "TESSERA_CACHE", "value": CACHE_MOUNT},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
    ]


def _probe(path: str, port: int, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def worker_launch(spec: LLMDeploymentSpec, info: ServerInfo, start: int, end: int) -> WorkerLaunch:
    w = spec.workload
    return WorkerLaunch(
        model=model_path(spec),
        blocks=(start, end),
        memory_bytes=info.memory_bytes,  # the whole GPU's: the stage counts its ends
        name=info.name,
        host="0.0.0.0",  # a pod: its own network namespace
        port=WORKER_PORT,
        max_length=w.max_input_tokens + w.max_output_tokens,
        dtype=spec.model.dtype,
        max_batch_tokens=spec.stages.max_batch_tokens,
        batch_invariant=spec.stages.batch_invariant,
        threads=1 if spec.stages.batch_invariant else 0,  # 0: torch's choice
        token_file=TOKEN_FILE,
    )


def worker_args(spec: LLMDeploymentSpec, info: ServerInfo, start: int, end: int) -> list[str]:
    return worker_launch(spec, info, start, end).argv()


def stage_deployment(
    owner: Owner,
    spec: LLMDeploymentSpec,
    info: ServerInfo,
    blocks: tuple[int, int],
    images: Images,
) -> dict[str, Any]:
    name = stage_name(owner, info.name)
    start, end = blocks
    res = spec.stages.resources
    pod_labels = {**labels(owner, "stage"), f"{GROUP}/stage": name}
    tolerations = [t.model_dump(exclude_defaults=True) for t in spec.node_pool.tolerations]
    tolerations.append({"key": info.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    node_term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [info.node]}]}
    container = {
        "name": "worker",
        "image": images.worker,
        "imagePullPolicy": images.pull_policy,
        "command": ["tessera"],
        "args": worker_args(spec, info, start, end),
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        "env": _env(),
        "resources": {
            "requests": {"cpu": res.cpu, "memory": res.memory, info.gpu_resource: "1"},
            "limits": {"memory": res.memory, info.gpu_resource: "1"},
        },
        "readinessProbe": _probe("/readyz", WORKER_PORT, 5, 3),
        "livenessProbe": _probe("/healthz", WORKER_PORT, 10, 3),
        # Loading weights can take minutes: liveness starts only once the worker answers.
        "startupProbe": _probe("/healthz", WORKER_PORT, 10, 90),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(spec),
    }
    annotations = {SERVER_ANNOTATION: info.name, BLOCKS_ANNOTATION: f"{start}:{end}"}
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(owner, name, "stage", **annotations),
            "spec": {
                "replicas": 1,
                # One GPU cannot hold the old and the new block range at once.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {DEPLOYMENT_LABEL: owner.name, f"{GROUP}/stage": name}},
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": annotations},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "securityContext": _pod_security(),
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [node_term]
                                }
                            }
                        },
                        "tolerations": tolerations,
                        "containers": [container],
                        "volumes": _volumes(owner, spec, images.pull_policy),
                    },
                },
            },
        }
    )


def _cluster_ip_service(
    metadata: dict[str, Any], selector: dict[str, str], port: int
) -> dict[str, Any]:
    """A ClusterIP Service with one TCP port named http (stage and router alike)."""
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
            },
        }
    )


def stage_service(owner: Owner, server: str) -> dict[str, Any]:
    name = stage_name(owner, server)
    return _cluster_ip_service(
        _metadata(owner, name, "stage", **{SERVER_ANNOTATION: server}),
        {DEPLOYMENT_LABEL: owner.name, f"{GROUP}/stage": name},
        WORKER_PORT,
    )


def endpoints_map(owner: Owner, plan: Plan) -> dict[str, str]:
    return {
        p.server: f"http://{stage_name(owner, p.server)}.{owner.namespace}.svc:{WORKER_PORT}"
        for p in plan.placement
    }


def plan_configmap(
    owner: Owner, problem: Problem, plan: Plan, endpoints: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The router's plan set (`placement.planset`), for the routed servers only.
    `endpoints`: the stages' URLs when some differ from `endpoints_map` (vLLM stages)."""
    urls = dict(endpoints) if endpoints is not None else endpoints_map(owner, plan)
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(owner, plan_name(owner), "plan"),
            "data": PlanSet(problem, plan, urls).texts(compact=True),
        }
    )


def router_deployment(
    owner: Owner,
    spec: LLMDeploymentSpec,
    images: Images,
    zone_label: str,
    zone: str,
) -> dict[str, Any]:
    name = router_name(owner)
    res = spec.router.resources
    files = PlanFiles.in_dir(pathlib.Path(PLAN_MOUNT))
    key_secret = spec.router.api_key_secret
    launch = RouterLaunch(
        plan=str(files.plan),
        problem=str(files.problem),
        endpoints=str(files.endpoints),
        model_name=spec.model.name,
        tokenizer=model_path(spec),
        host="0.0.0.0",  # a pod: its own network namespace
        port=ROUTER_PORT,
        worker_token_file=TOKEN_FILE,
        # Not optional: without its keys the router does not start (it never runs open by mistake).
        api_keys_file=API_KEYS_FILE if key_secret is not None else None,
    )
    mounts = [*_mounts(spec), {"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True}]
    volumes = [
        *_volumes(owner, spec, images.pull_policy),
        {"name": "plan", "configMap": {"name": plan_name(owner)}},
    ]
    if key_secret is not None:
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
        items = [{"key": spec.router.api_key_secret_key, "path": "keys"}]
        volumes.append(
            {
                "name": "api-keys",
                "secret": {"secretName": key_secret, "items": items, "defaultMode": SECRET_MODE},
            }
        )
    zone_term = {"matchExpressions": [{"key": zone_label, "operator": "In", "values": [zone]}]}
    pod_labels = labels(owner, "router")
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(owner, name, "router"),
            "spec": {
                "replicas": spec.router.replicas,
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "selector": {
                    "matchLabels": {
                        DEPLOYMENT_LABEL: owner.name,
                        "app.kubernetes.io/component": "router",
                    }
                },
                "template": {
                    # No plan hash here: a new plan must not roll the router (that would drop every
                    # stream); the router re-reads the mounted plan files in place.
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "securityContext": _pod_security(),
                        "affinity": {
                            "nodeAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [
                                    {"weight": 100, "preference": zone_term}
                                ]
                            }
                        },
                        "containers": [
                            {
                                "name": "router",
                                "image": images.router,
                                "imagePullPolicy": images.pull_policy,
                                "command": ["tessera"],
                                "args": launch.argv(),
                                "ports": [
                                    {
                                        "name": "http",
                                        "containerPort": ROUTER_PORT,
                                        "protocol": "TCP",
                                    }
                                ],
                                "env": _env(),
                                "resources": {
                                    "requests": {"cpu": res.cpu, "memory": res.memory},
                                    "limits": {"memory": res.memory},
                                },
                                # Ready only with a complete chain; alive while it answers
                                # (a pool without a chain must not restart the router).
                                "readinessProbe": _probe("/readyz", ROUTER_PORT, 5, 3),
                                "livenessProbe": _probe("/healthz", ROUTER_PORT, 10, 6),
                                "securityContext": _container_security(),
                                "volumeMounts": mounts,
                            }
                        ],
                        "volumes": volumes,
                    },
                },
            },
        }
    )


def router_service(owner: Owner) -> dict[str, Any]:
    return _cluster_ip_service(
        _metadata(owner, router_name(owner), "router"),
        {DEPLOYMENT_LABEL: owner.name, "app.kubernetes.io/component": "router"},
        ROUTER_PORT,
    )


def worker_token_secret(owner: Owner, token: str) -> dict[str, Any]:
    """The per-deployment token of the router-to-worker hop. Created once, never rewritten."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(owner, worker_token_name(owner), "worker-token"),
        "type": "Opaque",
        "immutable": True,
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def _peer(p: IngressPeer) -> dict[str, Any]:
    if p.cidr is not None:
        return {"ipBlock": {"cidr": p.cidr}}
    out: dict[str, Any] = {}
    for key, sel in (("namespaceSelector", p.namespace_selector), ("podSelector", p.pod_selector)):
        if sel is not None:
            out[key] = sel.model_dump(by_alias=True, exclude_defaults=True)
    return out


def stage_network_policy(owner: Owner, spec: LLMDeploymentSpec) -> dict[str, Any]:
    """Stage pods accept connections on the worker port from this deployment's router only
    (plus `spec.networkPolicy.stagesFrom`). Kubelet probes come from the node, which most CNIs
    do not filter."""
    router = {"podSelector": {"matchLabels": _component_selector(owner, "router")}}
    peers = [router, *(_peer(p) for p in spec.network_policy.stages_from)]
    rule = {"from": peers, "ports": [{"protocol": "TCP", "port": WORKER_PORT}]}
    return _ingress_policy(owner, dns_name(owner.name, "stages"), "stage", rule)


def router_network_policy(owner: Owner, spec: LLMDeploymentSpec) -> dict[str, Any]:
    """The router accepts connections on its port only: from anyone, or `routerFrom`."""
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": ROUTER_PORT}]}
    if spec.network_policy.router_from:
        rule["from"] = [_peer(p) for p in spec.network_policy.router_from]
    return _ingress_policy(owner, dns_name(owner.name, "router"), "router", rule)


def _ingress_policy(
    owner: Owner, name: str, component: str, rule: dict[str, Any]
) -> dict[str, Any]:
    """A NetworkPolicy admitting only `rule` into this deployment's pods of `component`."""
    return with_hash(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(owner, name, component),
            "spec": {
                "podSelector": {"matchLabels": _component_selector(owner, component)},
                "policyTypes": ["Ingress"],
                "ingress": [rule],
            },
        }
    )


def _component_selector(owner: Owner, component: str) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: owner.name, "app.kubernetes.io/component": component}
