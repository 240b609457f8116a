"""One operator at a time: kopf peering, and the same rule for the resync loop.

kopf pauses its handlers while a peer with a higher priority is alive (and every peer while two
share the highest). The resync loop is ours, not kopf's, so it asks the same question of the
peering object before each pass: is this operator the only live one with the top priority?
Each replica takes a random priority at start (see tessera.cli.operator), so one leads and the
others wait until its record expires (its lifetime after its last heartbeat).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP, VERSION = "kopf.dev", "v1"
CLUSTER_PLURAL, NAMESPACED_PLURAL = "clusterkopfpeerings", "kopfpeerings"
MAX_PRIORITY = 2**31 - 1


@dataclass(frozen=True)
class Peering:
    name: str
    priority: int
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide (ClusterKopfPeering)


def _parse(raw: Any) -> datetime.datetime | None:
    try:
        when = datetime.datetime.fromisoformat(str(raw))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def live_priorities(status: Mapping[str, Any], now: datetime.datetime) -> list[int]:
    """The priorities of the peers whose record has not expired."""
    out = []
    for record in status.values():
        if not isinstance(record, Mapping):
            continue
        seen = _parse(record.get("lastseen"))
        lifetime = datetime.timedelta(seconds=int(record.get("lifetime", 60)))
        if seen is not None and seen + lifetime > now:
            out.append(int(record.get("priority", 0)))
    return out


def leading(status: Mapping[str, Any], priority: int, now: datetime.datetime) -> bool:
    """Whether the operator with `priority` may write: its own record is live and no other live
    peer has the same or a higher priority (kopf's rule)."""
    prios = live_priorities(status, now)
    return priority in prios and max(prios) == priority and prios.count(priority) == 1
