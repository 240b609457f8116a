"""kopf handlers: thin. Every trigger ends in `run()`, which maps errors in one place.

Triggers: the LLMDeployment itself (create, spec update, operator resume), a relevant Node
change (labels, readiness, cordon, taints, allocatable GPUs: heartbeats are ignored), a stage or
router Deployment changing readiness, and one operator-wide resync loop (every LLMDeployment
every TESSERA_RESYNC_SECONDS; one waiting for its API key Secret every
TESSERA_RECHECK_SECONDS). The loop is not a kopf timer on purpose: kopf puts its finalizer on
every object that has a timer or daemon, and then a CR cannot be deleted while the operator is
down. Without one, deletion is plain garbage collection through owner references.
Passes for one LLMDeployment are serialised, and a burst of triggers collapses into one pass
that reads the latest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from tessera.api.crd import GROUP, PLURAL, VERSION
from tessera.errors import Infeasible, InvalidInput

from . import inventory, manifests, peering, status
from .kube import Kube, Rejected
from .reconcile import (
    PlanCache,
    Settings,
    TokenMemo,
    is_ready,
    parse_spec,
    reconcile,
    report_failure,
)

log = logging.getLogger("tessera.operator")
RETRY_S = 2.0


def _seconds(var: str, default: float) -> float:
    return float(os.environ.get(var, str(default)))


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: bool = False


@dataclass
class _State:
    kube: Kube | None = None
    cache: PlanCache = field(default_factory=PlanCache)
    tokens: TokenMemo = field(default_factory=TokenMemo)
    soon: set[tuple[str, str]] = field(default_factory=set)  # re-check at the next tick
    resync_task: asyncio.Task[None] | None = None
    slots: dict[tuple[str, str], _Slot] = field(default_factory=dict)
    nodes: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # (ready, generation) of each child Deployment: a spec edit bumps the generation.
    children: dict[tuple[str, str], tuple[bool, Any]] = field(default_factory=dict)
    # One pass at a time across LLMDeployments: each plans with the GPUs the others hold, so
    # two passes in parallel could both count the same free GPU.
    planning: threading.Lock = field(default_factory=threading.Lock)
    guard: threading.Lock = field(default_factory=threading.Lock)
    peering: peering.Peering | None = None  # set by `tessera operator --peering`; None: alone
    leading: bool = True


STATE = _State()


def settings_from_env() -> Settings:
    return Settings(
        manifests.Images(
            worker=os.environ.get(
                "TESSERA_WORKER_IMAGE", "ghcr.io/tessera-dev/tessera-worker:0.1.0"
            ),
            router=os.environ.get(
                "TESSERA_ROUTER_IMAGE", "ghcr.io/tessera-dev/tessera-router:0.1.0"
            ),
            pull_policy=os.environ.get("TESSERA_IMAGE_PULL_POLICY", "IfNotPresent"),
            vllm=os.environ.get("TESSERA_VLLM_IMAGE") or None,
        )
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kube() -> Kube:
    with STATE.guard:
        if STATE.kube is None:
            STATE.kube = Kube()
        return STATE.kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 4
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    with STATE.guard:  # a fresh start (also between test runs in one process)
        STATE.kube = Kube()
        STATE.nodes.clear()
        STATE.children.clear()
        STATE.slots.clear()
        STATE.soon.clear()
        STATE.tokens = TokenMemo()
        STATE.planning = threading.Lock()  # not one a previous run's stray pass still holds
        STATE.leading = True


@kopf.on.startup()
async def start_resync(**_: Any) -> None:
    STATE.resync_task = asyncio.create_task(_resync_loop())


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    task, STATE.resync_task = STATE.resync_task, None
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _resync_loop() -> None:
    loop = asyncio.get_running_loop()
    resync_s = _seconds("TESSERA_RESYNC_SECONDS", 60.0)
    tick_s = min(_seconds("TESSERA_RECHECK_SECONDS", 10.0), resync_s)
    last_full = loop.time()
    while True:
        await asyncio.sleep(tick_s)
        full = loop.time() - last_full >= resync_s - tick_s / 2
        if full:
            last_full = loop.time()
        if not await loop.run_in_executor(None, _may_write):
            continue  # another replica leads: kopf has paused our handlers, the loop waits too
        with STATE.guard:
            keys, STATE.soon = STATE.soon, set()
        try:
            await loop.run_in_executor(None, _resync, keys, full)
        except ApiException as exc:  # the API server is away: the next tick tries again
            log.warning("resync failed: API %s %s", exc.status, exc.reason)
            with STATE.guard:
                STATE.soon |= keys
        except Exception:  # a bug must not end the loop (and with it every resync) silently
            log.exception("resync failed")


def _may_write() -> bool:
    me = STATE.peering
    if me is None:
        return True
    now = datetime.datetime.now(datetime.UTC)
    try:
        lead = all(
            peering.leading(_kube().peering_status(me.name, ns), me.priority, now)
            for ns in me.namespaces or (None,)
        )
    except ApiException as exc:
        log.warning("peering %s not read: API %s", me.name, exc.status)
        lead = False
    if lead != STATE.leading:
        log.info("resync %s", "resumed: this operator leads" if lead else "paused: another leads")
        STATE.leading = lead
    return lead


def _resync(keys: set[tuple[str, str]], full: bool) -> None:
    if full:
        for cr in _kube().list_llmds():
            md = cr["metadata"]
            keys.add((md["namespace"], md["name"]))
            STATE.tokens.forget(md["uid"])  # re-create the worker token if someone deleted it
    for namespace, name in sorted(keys):
        _run_quietly(namespace, name)


def run(namespace: str, name: str) -> None:
    """One reconcile pass for namespace/name; a no-op if one is already queued for it."""
    with STATE.guard:
        slot = STATE.slots.setdefault((namespace, name), _Slot())
        if slot.waiting:
            return
        slot.waiting = True
    with slot.lock:
        with STATE.guard:
            slot.waiting = False
        kube = _kube()
        body = kube.get_llmd(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return

        def emit(type_: str, reason: str, message: str) -> None:
            try:
                kube.event(body, type_, reason, message)
            except ApiException as exc:  # an Event is a courtesy; the status says it all
                log.warning(
                    "event %s for %s/%s not posted: API %s", reason, namespace, name, exc.status
                )

        try:
            with STATE.planning:
                new_status = reconcile(
                    kube, body, settings_from_env(), STATE.cache, _now(), emit, STATE.tokens
                )
            # Re-check soon while waiting for keys or for stage pods (a pod the scheduler
            # cannot place shows up in the status without a watch on every pod).
            if status.waiting_for_keys(new_status) or new_status.get("phase") == "Deploying":
                with STATE.guard:
                    STATE.soon.add((namespace, name))
        except (InvalidInput, Infeasible) as exc:
            reason = "Infeasible" if isinstance(exc, Infeasible) else "InvalidSpec"
            if isinstance(exc, Rejected):  # the API server refused an object built from the spec
                reason = "Rejected"
            _fail(kube, body, reason, str(exc), emit)
            raise kopf.PermanentError(str(exc)) from None
        except ApiException as exc:
            if exc.status == 404 and kube.get_llmd(namespace, name) is None:
                return  # deleted while we worked: its children go with it
            if exc.status in (404, 409, 422, 429) or exc.status is None or exc.status >= 500:
                raise kopf.TemporaryError(
                    f"API {exc.status}: {exc.reason}", delay=RETRY_S
                ) from None
            raise
        except Exception as exc:  # a bug (e.g. in a solver): this CR fails, the others go on
            log.exception("reconcile of %s/%s failed", namespace, name)
            _fail(kube, body, "InternalError", f"{type(exc).__name__}: {exc}", emit)
            raise kopf.PermanentError(f"{type(exc).__name__}: {exc}") from None


def _fail(kube: Kube, body: Mapping[str, Any], reason: str, message: str, emit: Any) -> None:
    """Failed in the status, and a Warning Event once per new failure (not per resync)."""
    try:
        if report_failure(kube, body, reason, message, _now()):
            emit("Warning", reason, message)
    except ApiException as exc:
        log.warning("status of %s not written: API %s", body["metadata"]["name"], exc.status)


def _run_quietly(namespace: str, name: str) -> None:
    """For triggers other than the CR itself: failures are in the status; kopf need not retry."""
    try:
        run(namespace, name)
    except kopf.PermanentError:
        pass  # reported in the status and as an Event
    except kopf.TemporaryError as exc:
        log.warning("reconcile of %s/%s deferred to the resync: %s", namespace, name, exc)
    except Exception:  # one CR's failure never stops the others' reconcile
        log.exception("reconcile of %s/%s failed", namespace, name)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_llmdeployment(namespace: str | None, name: str, **_: Any) -> None:
    run(namespace or "default", name)


def _selected_by(node_labels: Mapping[str, str]) -> list[tuple[str, str]]:
    hits = []
    for cr in _kube().list_llmds():
        md = cr["metadata"]
        try:
            selector = parse_spec(cr.get("spec")).node_pool.selector
        except InvalidInput:
            continue
        if inventory.selector_matches(selector, node_labels):
            hits.append((md["namespace"], md["name"]))
    return hits


@kopf.on.event("", "v1", "nodes")
def on_node(body: kopf.Body, name: str, **kwargs: Any) -> None:
    event_type = kwargs.get("type")
    new = None if event_type == "DELETED" else inventory.fingerprint(body)
    with STATE.guard:
        old = STATE.nodes.get(name)
        if new is None:
            STATE.nodes.pop(name, None)
        else:
            STATE.nodes[name] = new
    if event_type is None or old == new:
        return  # the initial listing (a resumed CR reconciles anyway), or a heartbeat
    labels = dict(body.get("metadata", {}).get("labels") or {})
    affected = set(_selected_by(labels))
    if old is not None:
        affected |= set(_selected_by(dict(old[0])))
    for namespace, cr_name in sorted(affected):
        _run_quietly(namespace, cr_name)


@kopf.on.event(
    "apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": manifests.MANAGED_BY}
)
def on_child(body: kopf.Body, namespace: str | None, name: str, **kwargs: Any) -> None:
    event_type = kwargs.get("type")
    owner = (body.get("metadata", {}).get("labels") or {}).get(manifests.DEPLOYMENT_LABEL)
    if owner is None:
        return
    print_ = (is_ready(body), body.get("metadata", {}).get("generation"))
    key = (namespace or "default", name)
    with STATE.guard:
        old = STATE.children.get(key)
        if event_type == "DELETED":
            STATE.children.pop(key, None)
        else:
            STATE.children[key] = print_
    # Our own creates are not news; readiness changes, spec edits (ours are undone at once:
    # the next pass finds no drift and writes nothing) and deletions are.
    if event_type in (None, "ADDED") or (event_type == "MODIFIED" and old in (None, print_)):
        return
    _run_quietly(key[0], owner)
