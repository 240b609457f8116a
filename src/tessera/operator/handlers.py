"""kopf handlers: thin. Each one hands its trigger to the one operator object (runner.py).

Triggers: the LLMDeployment itself (create, spec update, operator resume), a relevant Node
change (labels, readiness, cordon, taints, allocatable GPUs: heartbeats are ignored), a stage or
router Deployment changing readiness, and one operator-wide resync loop (every LLMDeployment
every TESSERA_RESYNC_SECONDS; one waiting for its API key Secret every
TESSERA_RECHECK_SECONDS). The settings are read from the environment once, at start-up.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
import kubernetes

from tessera.api.crd import GROUP, PLURAL, VERSION
from tessera.errors import InvalidInput

from . import manifests
from . import settings as operator_settings
from .kube import Kube
from .reconcile import reconcile
from .runner import Key, Operator

MAX_WORKERS = 4


def _kube() -> Kube:
    return STATE.client()


# The operator. Its seams look `_kube` and `reconcile` up in this module at each call, so that
# a test can replace either here.
STATE = Operator(
    operator_settings.defaults(),
    connect=lambda: _kube(),
    reconcile=lambda *args: reconcile(*args),
)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.execution.max_workers = MAX_WORKERS
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    try:
        parsed = operator_settings.from_env(os.environ)
    except InvalidInput as exc:  # a bad variable stops the operator, naming it
        raise kopf.PermanentError(str(exc)) from None
    STATE.start(parsed, Kube())


@kopf.on.startup()
async def start_resync(**_: Any) -> None:
    await STATE.start_resync()


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    await STATE.stop_resync()


def run(namespace: str, name: str) -> None:
    STATE.run(namespace, name)


def _may_write() -> bool:
    return STATE.may_write()


def _resync(keys: set[Key], full: bool) -> None:
    STATE.resync(keys, full)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_llmdeployment(namespace: str | None, name: str, **_: Any) -> None:
    STATE.run(namespace or "default", name)


@kopf.on.event("", "v1", "nodes")
def on_node(body: kopf.Body, name: str, **kwargs: Any) -> None:
    STATE.node_changed(body, name, kwargs.get("type"))


@kopf.on.event(
    "apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": manifests.MANAGED_BY}
)
def on_child(body: kopf.Body, namespace: str | None, name: str, **kwargs: Any) -> None:
    owner = (body.get("metadata", {}).get("labels") or {}).get(manifests.DEPLOYMENT_LABEL)
    if owner is not None:
        STATE.child_changed(body, (namespace or "default", name), owner, kwargs.get("type"))
