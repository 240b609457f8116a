"""Stages with `engine: vllm`: a full replica runs vLLM's OpenAI server instead of the worker.

Which servers: `placement.replicas.full_replicas` (they hold every block with room for their
share of the concurrency). The Deployment keeps the stage's name, Service, port, pinning,
security context and token volume, so routing, NetworkPolicies and rollouts treat it as any
stage; the router tells it apart by the `vllm+` prefix of its URL in endpoints.json. vLLM
takes its API key from `VLLM_API_KEY` only, so the container reads the mounted worker token
into that variable at start (secrets stay volumes, never env in the manifest).
"""

from __future__ import annotations

import shlex
from collections.abc import Collection
from typing import Any

from tessera.api.crd import LLMDeploymentSpec
from tessera.api.vllm import API_KEY_ENV, MODULE, endpoint, server_args
from tessera.errors import InvalidInput
from tessera.placement import Plan, Problem
from tessera.placement.replicas import full_replicas

from . import manifests as m
from .inventory import ServerInfo

DEFAULT_IMAGE = "vllm/vllm-openai:v0.11.0"
SHM_MOUNT = "/dev/shm"  # vLLM's worker processes exchange tensors through shared memory
STARTUP_FAILURES = 120  # x 10 s: loading (and compiling) a large model takes minutes


def vllm_servers(spec: LLMDeploymentSpec, problem: Problem, plan: Plan) -> frozenset[str]:
    """The servers of `plan` that run vLLM: none unless `stages.engine` is vllm."""
    if spec.stages.engine != "vllm":
        return frozenset()
    return frozenset(full_replicas(problem, plan))


def image_of(spec: LLMDeploymentSpec, images: m.Images) -> str:
    """The vLLM image: the deployment's own, else the operator's, else vLLM's release."""
    return spec.images.vllm or images.vllm or DEFAULT_IMAGE


def endpoints_map(owner: m.Owner, plan: Plan, vllm: Collection[str]) -> dict[str, str]:
    """`manifests.endpoints_map` with the vLLM stages' URLs marked for the router."""
    urls = m.endpoints_map(owner, plan)
    return {s: endpoint(u) if s in vllm else u for s, u in urls.items()}


def vllm_args(spec: LLMDeploymentSpec, info: ServerInfo) -> list[str]:
    if spec.model.source.package is not None:
        raise InvalidInput(
            "spec.model.source", "engine vllm needs the weights as a directory (pvc, hostPath "
            "or image), not a Python package",
        )  # fmt: skip
    w = spec.workload
    return server_args(
        m.model_path(spec),
        spec.model.name,
        port=m.WORKER_PORT,
        dtype=spec.model.dtype,
        max_model_len=w.max_input_tokens + w.max_output_tokens,
    )


def vllm_stage_deployment(
    owner: m.Owner,
    spec: LLMDeploymentSpec,
    info: ServerInfo,
    problem: Problem,
    images: m.Images,
    image: str = DEFAULT_IMAGE,
) -> dict[str, Any]:
    """The stage Deployment of full replica `info`, running `image` (vLLM's OpenAI server)."""
    dep = m.stage_deployment(owner, spec, info, (0, problem.num_blocks), images)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    line = shlex.join(["exec", "python3", "-m", MODULE, *vllm_args(spec, info)])
    container.update(
        {
            "name": "vllm",
            "image": image,
            "command": ["/bin/sh", "-c"],
            "args": [f'{API_KEY_ENV}="$(cat {m.TOKEN_FILE})" {line}'],
            # /health answers 200 once the engine is up, 503 if it died (then restart).
            "readinessProbe": m._probe("/health", m.WORKER_PORT, 5, 3),
            "livenessProbe": m._probe("/health", m.WORKER_PORT, 10, 3),
            "startupProbe": m._probe("/health", m.WORKER_PORT, 10, STARTUP_FAILURES),
        }
    )
    container["env"] = [
        *container["env"],
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},  # the root filesystem is read-only
        {"name": "VLLM_CACHE_ROOT", "value": "/tmp/vllm"},
    ]
    container["volumeMounts"] = [
        *container["volumeMounts"],
        {"name": "shm", "mountPath": SHM_MOUNT},
    ]
    pod["volumes"] = [*pod["volumes"], {"name": "shm", "emptyDir": {"medium": "Memory"}}]
    dep["metadata"]["annotations"].pop(m.HASH_ANNOTATION, None)
    return m.with_hash(dep)
