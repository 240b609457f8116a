"""The operator object: built from typed settings, it owns what outlives one pass (the API
client, the solver's cache, the worker-token memo, the per-CR slots, the trigger filters and the
resync loop) and runs reconcile passes, mapping their errors to kopf's in one place.

Passes for one LLMDeployment are serialised, and a burst of triggers collapses into one pass
that reads the latest state. The resync loop is not a kopf timer on purpose: kopf puts its
finalizer on every object that has a timer or daemon, and then a CR cannot be deleted while the
operator is down. Without one, deletion is plain garbage collection through owner references.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tessera.errors import Infeasible, InvalidInput

from . import inventory, peering, status
from .execute import EventSink, TokenMemo, report_failure
from .kube import Kube, Rejected
from .observe import parse_spec
from .plan import is_ready
from .reconcile import PlanCache
from .reconcile import reconcile as reconcile_pass
from .settings import OperatorSettings, Settings

log = logging.getLogger("tessera.operator")
RETRY_S = 2.0
STOP_WAIT_S = 30.0  # a stop waits this long for the resync pass in flight
Key = tuple[str, str]  # (namespace, name)
Reconcile = Callable[
    [Kube, Mapping[str, Any], Settings, PlanCache, str, EventSink, TokenMemo], dict[str, Any]
]


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: bool = False


class Operator:
    """One per process. `connect` and `reconcile` are the seams a test replaces (the API client
    and the pass); by default the operator's own client and tessera.operator.reconcile."""

    def __init__(
        self,
        settings: OperatorSettings,
        *,
        connect: Callable[[], Kube] | None = None,
        reconcile: Reconcile = reconcile_pass,
    ) -> None:
        self._connect = connect or self.client
        self._reconcile = reconcile
        self.peering: peering.Peering | None = None  # `tessera operator --peering`; None: alone
        self.resync_task: asyncio.Task[None] | None = None
        # The resync pass running in a worker thread: a cancelled task does not stop a thread,
        # so stopping sets `stopping` (checked between CRs) and waits for the pass to end.
        self.resync_job: asyncio.Future[None] | None = None
        self.stopping = threading.Event()
        self.guard = threading.Lock()
        self._client: Kube | None = None
        self.start(settings)

    def start(self, settings: OperatorSettings, client: Kube | None = None) -> None:
        """A fresh start (also between test runs in one process); the peering stays."""
        with self.guard:
            self.settings = settings
            self._client = client
            self.cache = PlanCache()
            self.tokens = TokenMemo()
            self.soon: set[Key] = set()  # re-check at the next tick
            self.slots: dict[Key, _Slot] = {}
            self.nodes: dict[str, tuple[Any, ...]] = {}
            # (ready, generation) of each child Deployment: a spec edit bumps the generation.
            self.children: dict[Key, tuple[bool, Any]] = {}
            # One pass at a time across LLMDeployments: each plans with the GPUs the others
            # hold, so two passes in parallel could both count the same free GPU. A new lock:
            # not one a previous run's stray pass still holds.
            self.planning = threading.Lock()
            self.leading = True
            self.stopping.clear()

    def client(self) -> Kube:
        with self.guard:
            if self._client is None:
                self._client = Kube()
            return self._client

    # ---- passes ----
    def run(self, namespace: str, name: str) -> None:
        """One reconcile pass for namespace/name; a no-op if one is already queued for it."""
        with self.guard:
            slot = self.slots.setdefault((namespace, name), _Slot())
            if slot.waiting:
                return
            slot.waiting = True
        with slot.lock:
            with self.guard:
                slot.waiting = False
            self._pass(namespace, name)

    def _pass(self, namespace: str, name: str) -> None:
        kube = self._connect()
        body = kube.get_llmd(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # gone or going: the garbage collector removes its children

        def emit(type_: str, reason: str, message: str) -> None:
            try:
                kube.event(body, type_, reason, message)
            except ApiException as exc:  # an Event is a courtesy; the status says it all
                log.warning(
                    "event %s for %s/%s not posted: API %s", reason, namespace, name, exc.status
                )

        try:
            with self.planning:
                new_status = self._reconcile(
                    kube, body, self.settings.reconcile, self.cache, now_utc(), emit, self.tokens
                )
            # Re-check soon while waiting for keys or for stage pods (a pod the scheduler
            # cannot place shows up in the status without a watch on every pod).
            if status.waiting_for_keys(new_status) or new_status.get("phase") == "Deploying":
                with self.guard:
                    self.soon.add((namespace, name))
        except (InvalidInput, Infeasible) as exc:
            reason = "Infeasible" if isinstance(exc, Infeasible) else "InvalidSpec"
            if isinstance(exc, Rejected):  # the API server refused an object built from the spec
                reason = "Rejected"
            self._fail(kube, body, reason, str(exc), emit)
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
            self._fail(kube, body, "InternalError", f"{type(exc).__name__}: {exc}", emit)
            raise kopf.PermanentError(f"{type(exc).__name__}: {exc}") from None

    @staticmethod
    def _fail(
        kube: Kube, body: Mapping[str, Any], reason: str, message: str, emit: EventSink
    ) -> None:
        """Failed in the status, and a Warning Event once per new failure (not per resync)."""
        try:
            if report_failure(kube, body, reason, message, now_utc()):
                emit("Warning", reason, message)
        except ApiException as exc:
            log.warning("status of %s not written: API %s", body["metadata"]["name"], exc.status)

    def run_quietly(self, namespace: str, name: str) -> None:
        """For triggers other than the CR itself: failures are in the status; kopf need not
        retry."""
        try:
            self.run(namespace, name)
        except kopf.PermanentError:
            pass  # reported in the status and as an Event
        except kopf.TemporaryError as exc:
            log.warning("reconcile of %s/%s deferred to the resync: %s", namespace, name, exc)
        except Exception:  # one CR's failure never stops the others' reconcile
            log.exception("reconcile of %s/%s failed", namespace, name)

    # ---- the resync loop ----
    async def start_resync(self) -> None:
        self.resync_task = asyncio.create_task(self._resync_loop())

    async def stop_resync(self) -> None:
        """Ends the loop and the pass it runs: no pass of this run outlives it."""
        self.stopping.set()
        task, self.resync_task = self.resync_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        job, self.resync_job = self.resync_job, None
        if job is not None:
            try:
                await asyncio.wait_for(asyncio.shield(job), STOP_WAIT_S)
            except TimeoutError:
                log.warning("a resync pass still runs %.0f s after the stop", STOP_WAIT_S)
            except Exception:  # the loop was cancelled before it could see this
                log.exception("resync failed")

    async def _resync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while True:
            resync_s, tick_s = self.settings.resync_s, self.settings.tick_s
            await asyncio.sleep(tick_s)
            full = loop.time() - last_full >= resync_s - tick_s / 2
            if full:
                last_full = loop.time()
            if not await loop.run_in_executor(None, self.may_write):
                continue  # another replica leads: kopf has paused our handlers, the loop waits
            with self.guard:
                keys, self.soon = self.soon, set()
            self.resync_job = loop.run_in_executor(None, self.resync, keys, full)
            try:
                await asyncio.shield(self.resync_job)
            except ApiException as exc:  # the API server is away: the next tick tries again
                log.warning("resync failed: API %s %s", exc.status, exc.reason)
                with self.guard:
                    self.soon |= keys
            except Exception:  # a bug must not end the loop (and with it every resync) silently
                log.exception("resync failed")
            self.resync_job = None  # seen: a cancellation leaves it for stop_resync to wait on

    def may_write(self) -> bool:
        me = self.peering
        if me is None:
            return True
        now = datetime.datetime.now(datetime.UTC)
        try:
            lead = all(
                peering.leading(self._connect().peering_status(me.name, ns), me.priority, now)
                for ns in me.namespaces or (None,)
            )
        except ApiException as exc:
            log.warning("peering %s not read: API %s", me.name, exc.status)
            lead = False
        if lead != self.leading:
            log.info(
                "resync %s", "resumed: this operator leads" if lead else "paused: another leads"
            )
            self.leading = lead
        return lead

    def resync(self, keys: set[Key], full: bool) -> None:
        if full:
            for cr in self._connect().list_llmds():
                md = cr["metadata"]
                keys.add((md["namespace"], md["name"]))
                self.tokens.forget(md["uid"])  # re-create the worker token if one was deleted
        for namespace, name in sorted(keys):
            if self.stopping.is_set():
                return
            self.run_quietly(namespace, name)

    # ---- other triggers ----
    def _selected_by(self, node_labels: Mapping[str, str]) -> list[Key]:
        hits = []
        for cr in self._connect().list_llmds():
            md = cr["metadata"]
            try:
                selector = parse_spec(cr.get("spec")).node_pool.selector
            except InvalidInput:
                continue
            if inventory.selector_matches(selector, node_labels):
                hits.append((md["namespace"], md["name"]))
        return hits

    def node_changed(self, body: Mapping[str, Any], name: str, event_type: str | None) -> None:
        """A Node event: a pass for each LLMDeployment that selects it, before or after."""
        new = None if event_type == "DELETED" else inventory.fingerprint(body)
        with self.guard:
            old = self.nodes.get(name)
            if new is None:
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = new
        if event_type is None or old == new:
            return  # the initial listing (a resumed CR reconciles anyway), or a heartbeat
        labels = dict(body.get("metadata", {}).get("labels") or {})
        affected = set(self._selected_by(labels))
        if old is not None:
            affected |= set(self._selected_by(dict(old[0])))
        for namespace, cr_name in sorted(affected):
            self.run_quietly(namespace, cr_name)

    def child_changed(
        self, body: Mapping[str, Any], key: Key, owner: str, event_type: str | None
    ) -> None:
        """A child Deployment's event: a pass for its owner when readiness or the spec moved."""
        print_ = (is_ready(body), body.get("metadata", {}).get("generation"))
        with self.guard:
            old = self.children.get(key)
            if event_type == "DELETED":
                self.children.pop(key, None)
            else:
                self.children[key] = print_
        # Our own creates are not news; readiness changes, spec edits (ours are undone at once:
        # the next pass finds no drift and writes nothing) and deletions are.
        if event_type in (None, "ADDED") or (event_type == "MODIFIED" and old in (None, print_)):
            return
        self.run_quietly(key[0], owner)
