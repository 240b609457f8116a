"""Execute: every write of one reconcile pass, in the order the outcome's contract gives.

The worker token first (never rewritten), then the Events, then the status (it says what the
pass is about to do before it does it: a long create reads Deploying, and a rejection below
turns it into Failed), then the children: new stages start before anything is removed.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

from . import manifests
from .kube import Kube
from .plan import Outcome, failure_status

EventSink = Callable[[str, str, str], None]  # (type Normal|Warning, reason, message)


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


def write_status(kube: Kube, owner: manifests.Owner, status: Mapping[str, Any]) -> None:
    kube.patch_status(owner.namespace, owner.name, dict(status))


def execute(kube: Kube, outcome: Outcome, emit: EventSink, tokens: TokenMemo) -> None:
    """Carry out one pass's outcome."""
    owner = outcome.owner
    if outcome.worker_token:
        ensure_worker_token(kube, owner, tokens)
    for event in outcome.events:
        emit(event.type, event.reason, event.message)
    if outcome.write_status:
        write_status(kube, owner, outcome.status)
    for item in outcome.apply:
        kube.apply(item.obj, item.existing)
    for kind, name in outcome.delete:
        kube.delete(kind, owner.namespace, name)


def report_failure(
    kube: Kube, body: Mapping[str, Any], reason: str, message: str, now: str
) -> bool:
    """Write the Failed status; False when it already said exactly this."""
    failure = failure_status(body, reason, message, now)
    if failure is None:
        return False
    write_status(kube, *failure)
    return True
