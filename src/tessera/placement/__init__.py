"""Block placement and request routing: pure values in, values out (no I/O, no clock but timing)."""

from .model import (
    Client,
    Link,
    ModelSpec,
    Placement,
    Plan,
    Predicted,
    PrefillCost,
    Problem,
    Server,
    Workload,
)
from .parse import plan_from_dict, plan_to_dict, problem_from_dict, problem_to_dict
from .solve import SOLVERS, choose_concurrency, solve
from .validate import validate

__all__ = [
    "SOLVERS",
    "Client",
    "Link",
    "ModelSpec",
    "Placement",
    "Plan",
    "Predicted",
    "PrefillCost",
    "Problem",
    "Server",
    "Workload",
    "choose_concurrency",
    "plan_from_dict",
    "plan_to_dict",
    "problem_from_dict",
    "problem_to_dict",
    "solve",
    "validate",
]
