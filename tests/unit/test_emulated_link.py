"""The emulated slow link (tests and benchmarks only): each direction is a serial pipe."""

from __future__ import annotations

import asyncio

import pytest

from tessera.worker import emulated_link
from tessera.worker.emulated_link import EmulatedLink


def test_messages_in_one_direction_queue_and_the_other_direction_is_free(monkeypatch):
    clock = [100.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:  # a fake clock: no wall time is measured
        slept.append(s)

    monkeypatch.setattr(emulated_link.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(emulated_link.asyncio, "sleep", sleep)
    link = EmulatedLink(12.5e6)  # 100 Mbit/s

    async def run() -> None:
        await link.carry("out", 1_250_000)  # 0.1 s
        await link.carry("out", 2_500_000)  # waits for the first: done at 0.3 s
        await link.carry("in", 1_250_000)  # the other direction: 0.1 s from now

    asyncio.run(run())
    assert slept == pytest.approx([0.1, 0.3, 0.1])


def test_a_bandwidth_must_be_positive():
    with pytest.raises(ValueError):
        EmulatedLink(0)
