"""The per-link wire dtype (placement.wire) and the transfer time the performance model adds."""

from __future__ import annotations

from typing import get_args

import pytest

from tessera.api import stage as api
from tessera.placement import Placement, Plan
from tessera.placement import wire as pw
from tessera.placement.perf import transfer_s

from .placement_helpers import problem

H = 576  # SmolLM2
MBIT = 1e6 / 8  # bytes per second in one Mbit/s


def test_outlier_int8_is_at_most_055_of_float16_and_the_names_match_the_protocol():
    assert pw.bytes_per_token(pw.INT8_OUTLIER, H) / pw.bytes_per_token(pw.FLOAT16, H) <= 0.55
    assert pw.bytes_per_token(pw.FLOAT32, H) == 4 * H
    assert set(pw.candidates(pw.FLOAT32, lossy=True)) <= set(get_args(api.WireDtype))
    assert pw.INT8_OUTLIER == api.WIRE_INT8_OUTLIER


def test_transfer_time_counts_bytes_per_element_and_is_free_without_a_bandwidth():
    fp32 = transfer_s(1024, H, 4.0, 100 * MBIT)
    assert fp32 == pytest.approx(1024 * H * 4 / (100 * MBIT))
    assert transfer_s(1024, H, 2.0, 100 * MBIT) == pytest.approx(fp32 / 2)
    assert transfer_s(1024, H, 4.0, None) == 0.0


def _choose(mbit: float | None, hop_s: float, compute: str = pw.FLOAT32, lossy: bool = False):
    bandwidth = None if mbit is None else mbit * MBIT
    return pw.choose(
        compute_dtype=compute,
        hidden_size=H,
        tokens=1024,
        hop_s=hop_s,
        bandwidth_bytes_per_s=bandwidth,
        lossy=lossy,
    )


def test_the_link_keeps_the_compute_dtype_until_transfer_dominates():
    # 1024 tokens of SmolLM2 hidden states: 2.4 MB in float32; 0.19 s at 100 Mbit/s.
    assert _choose(None, 0.01, lossy=True) == pw.FLOAT32  # no bandwidth known: exact
    assert _choose(10_000, 0.1, lossy=True) == pw.FLOAT32  # 1.9 ms of 100 ms
    assert _choose(100, 1.3) == pw.FLOAT16  # 15% in float32, 7% in float16
    assert _choose(100, 1.3, lossy=True) == pw.FLOAT16  # float16 is enough: no loss
    assert _choose(100, 0.2, lossy=True) == pw.INT8_OUTLIER  # a fast GPU: transfer dominates
    assert _choose(100, 0.2) == pw.FLOAT16  # not opted in: the smallest lossless one
    assert _choose(100, 0.2, compute=pw.BFLOAT16) == pw.BFLOAT16  # float16 would not shrink it


def test_a_boundary_takes_the_smaller_of_its_two_links():
    assert pw.boundary(pw.FLOAT32, pw.INT8_OUTLIER) == pw.INT8_OUTLIER
    assert pw.boundary(pw.FLOAT16, pw.FLOAT32) == pw.FLOAT16
    assert pw.boundary(None, pw.FLOAT16) == pw.FLOAT16
    assert pw.boundary(None, None) is None


def test_choose_wires_compresses_only_the_slow_link():
    prob = problem([("fast", 10**12, 0.0005), ("slow", 10**12, 0.0005)], blocks=10)
    plan = Plan(
        "pinned", True, (Placement("fast", 0, 5), Placement("slow", 5, 5)), {"c0": ("fast", "slow")}
    )
    links = pw.choose_wires(prob, plan, {"slow": 10 * MBIT}, hidden_size=H, lossy=True)
    chosen = {lk.server: lk.wire_dtype for lk in links}
    assert chosen == {"fast": pw.FLOAT32, "slow": pw.INT8_OUTLIER}
    slow = next(lk for lk in links if lk.server == "slow")
    assert slow.transfer_s < 0.3 * slow.exact_transfer_s
