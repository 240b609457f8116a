"""One reconcile pass for one LLMDeployment: observe, plan, execute.

Idempotent: it derives everything from the cluster (the CR, the Nodes, the labelled children),
so running it twice, or after an operator restart, changes nothing the second time. The steps
live in observe.py (reads), plan.py (pure decisions) and execute.py (writes); this module
strings them together and keeps the solver's cache. Errors are mapped in `handlers.py`; this
module raises tessera.errors and lets API errors through.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from tessera.api.crd import LLMDeploymentSpec
from tessera.placement import Plan, Problem, problem_to_dict, solve

from . import execute as execute_step
from . import plan as plan_step
from .execute import EventSink, TokenMemo, report_failure
from .kube import Kube
from .observe import observe, parse_spec, read_cr
from .plan import PLAN_BYTES_LIMIT, is_ready
from .settings import Settings

__all__ = [
    "PLAN_BYTES_LIMIT",
    "EventSink",
    "PlanCache",
    "Settings",
    "TokenMemo",
    "is_ready",
    "parse_spec",
    "reconcile",
    "report_failure",
]

CACHE_SIZE = 64


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


def reconcile(
    kube: Kube,
    body: Mapping[str, Any],
    settings: Settings,
    cache: PlanCache,
    now: str,
    emit: EventSink,
    tokens: TokenMemo | None = None,
) -> dict[str, Any]:
    """Bring the children in line with the spec and the nodes; return the status computed."""
    cr = read_cr(body)
    planning = plan_step.planning_status(cr, now)
    if planning is not None:  # a first solve may take a while: say so first
        execute_step.write_status(kube, cr.owner, planning)
    outcome = plan_step.plan(observe(kube, cr), settings, cache.solve, now)
    execute_step.execute(kube, outcome, emit, tokens if tokens is not None else TokenMemo())
    return dict(outcome.status)
