"""The operator's re-plan and rollout: the judgements live in tessera.placement (replan.py,
evaluate.py); this module keeps the names the operator and its tests import."""

from __future__ import annotations

from tessera.placement.evaluate import Ranges, covers, evaluate
from tessera.placement.replan import (
    MAX_ROLLOUT_STEPS,
    Decision,
    Step,
    decide,
    ranges_of,
    rollout_safe,
    rollout_step,
)
from tessera.placement.subset import restrict

__all__ = [
    "MAX_ROLLOUT_STEPS",
    "Decision",
    "Ranges",
    "Step",
    "covers",
    "decide",
    "evaluate",
    "ranges_of",
    "restrict",
    "rollout_safe",
    "rollout_step",
]
