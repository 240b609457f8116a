"""The plan table shows auto's own figures beside CG-BPRR's and the GPUs it uses."""

from __future__ import annotations

import random

from tessera.placement import solve
from tessera.placement.generate import random_pool
from tessera.placement.report import render_table


def test_auto_table_reports_gpus_used_cg_bprr_and_the_theorem_2_bound() -> None:
    pool = random_pool(random.Random(100), 100)
    plan = solve(pool, "auto", time_limit_s=10, max_servers=20)
    text = render_table(pool, plan, None)
    assert f"GPUs used                : {len(plan.placement)} of 100 (bound 20)" in text
    assert "CG-BPRR on the same pool" in text and "Theorem 2 bound" in text
    assert f"chosen: {plan.statistics.chosen}" in text


def test_cg_bprr_table_has_no_auto_lines() -> None:
    pool = random_pool(random.Random(100), 10)
    text = render_table(pool, solve(pool, "cg-bprr"), None)
    assert "GPUs used" not in text and "CG-BPRR on the same pool" not in text
