"""The simulator: requests arriving over time on a pool, routed by a policy (pure values).

`scenarios.parse_scenario` + `scenarios.build_scenario` turn a scenario file into values;
`run.run_policy` places, simulates and summarises one policy; `plots` draws the results.
"""

from .arrivals import Request, from_trace, poisson
from .engine import Served, backoff_wait, simulate
from .metrics import Summary, summarise
from .policies import POLICIES, Policy, build_policy
from .run import PolicyRun, run_policy
from .scenarios import SWEEPS, Scenario, build_scenario, parse_scenario, parse_sweep

__all__ = [
    "POLICIES",
    "SWEEPS",
    "Policy",
    "PolicyRun",
    "Request",
    "Scenario",
    "Served",
    "Summary",
    "backoff_wait",
    "build_policy",
    "build_scenario",
    "from_trace",
    "parse_scenario",
    "parse_sweep",
    "poisson",
    "run_policy",
    "simulate",
    "summarise",
]
