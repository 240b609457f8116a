"""Block placement and request routing: pure values in, values out (no I/O, no clock but timing).

Nothing here imports a MILP library until the MILP solves (milp.py), so the router and the
operator can import placement freely."""

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
    SolveStats,
    Workload,
)
from .parse import plan_from_dict, plan_to_dict, problem_from_dict, problem_to_dict
from .solve import REGISTRY, SOLVERS, Limits, Solver, SolverName, choose_concurrency, solve
from .validate import validate

__all__ = [
    "REGISTRY",
    "SOLVERS",
    "Limits",
    "SolveStats",
    "Solver",
    "SolverName",
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
