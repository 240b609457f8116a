"""The plan set: the three files a router serves from, as the operator's ConfigMap holds them and
as `tessera up` writes them to its run directory.

- `plan.json`: the plan (placement-contract.md);
- `problem.json`: the problem it solves;
- `endpoints.json`: server name -> base URL of the stages the router may call (a `vllm+` URL
  for a vLLM stage, `tessera.api.vllm`).

Texts and documents only: whoever writes or reads the files does the I/O (this package is pure).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.errors import InvalidInput

from .model import Plan, Problem
from .parse import plan_from_dict, plan_to_dict, problem_from_dict, problem_to_dict
from .validate import validate

PLAN_FILE = "plan.json"
PROBLEM_FILE = "problem.json"
ENDPOINTS_FILE = "endpoints.json"


@dataclass(frozen=True)
class PlanSet:
    problem: Problem
    plan: Plan
    endpoints: Mapping[str, str]  # server name -> base URL

    def texts(self, *, compact: bool) -> dict[str, str]:
        """File name -> content. `compact`: one line with sorted keys (a ConfigMap: a quarter
        of the indented size, `jq` reads it back for humans); else indented, for a run
        directory people open."""
        docs = {
            PLAN_FILE: plan_to_dict(self.plan),
            PROBLEM_FILE: problem_to_dict(self.problem),
            ENDPOINTS_FILE: dict(self.endpoints),
        }
        if compact:
            return {
                k: json.dumps(v, separators=(",", ":"), sort_keys=True) for k, v in docs.items()
            }
        return {k: json.dumps(v, indent=2) for k, v in docs.items()}


@dataclass(frozen=True)
class PlanFiles:
    """Where a router reads its plan set (`tessera router --plan --problem --endpoints`)."""

    plan: pathlib.Path
    problem: pathlib.Path
    endpoints: pathlib.Path

    @classmethod
    def in_dir(cls, directory: pathlib.Path) -> PlanFiles:
        return cls(directory / PLAN_FILE, directory / PROBLEM_FILE, directory / ENDPOINTS_FILE)

    def paths(self) -> tuple[pathlib.Path, ...]:
        return (self.plan, self.problem, self.endpoints)


def parse_plan_set(problem_doc: Any, plan_doc: Any, endpoints_doc: Any) -> PlanSet:
    """The three documents checked together; InvalidInput names the flag of the bad one."""
    problem = problem_from_dict(problem_doc)
    plan = plan_from_dict(plan_doc)
    if not plan.feasible:
        raise InvalidInput("--plan", f"the plan is infeasible: {plan.reason}")
    errors = validate(problem, plan)
    if errors:
        raise InvalidInput("--plan", f"does not fit the problem: {'; '.join(errors)}")
    if not isinstance(endpoints_doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in endpoints_doc.items()
    ):
        raise InvalidInput("--endpoints", "must map server names to base URLs")
    unknown = set(endpoints_doc) - {p.server for p in plan.placement}
    if unknown:
        raise InvalidInput("--endpoints", f"servers not in the plan: {sorted(unknown)}")
    return PlanSet(problem, plan, dict(endpoints_doc))
