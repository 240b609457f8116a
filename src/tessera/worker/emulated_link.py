"""A slow network link between the router and this stage, emulated for tests and benchmarks
(`tessera worker --bandwidth-mbit-s`, a node's `bandwidth_mbit_s` in `tessera up`).

Each direction is a serial pipe of a fixed bandwidth: a message waits until the messages before
it in the same direction have gone, then takes `bytes / bandwidth` seconds. The request's time
is spent before its steps run (it has not "arrived" before), the answer's before it is sent.
Never used in a real deployment, where the network itself is slow.
"""

from __future__ import annotations

import asyncio
import time


class EmulatedLink:
    def __init__(self, bandwidth_bytes_per_s: float) -> None:
        if bandwidth_bytes_per_s <= 0:
            raise ValueError("the bandwidth must be positive")
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self._free_at_s = {"in": 0.0, "out": 0.0}  # monotonic: when each direction is idle

    async def carry(self, direction: str, nbytes: int) -> None:
        """Wait until `nbytes` have crossed the link in `direction` ("in" or "out")."""
        start = max(time.monotonic(), self._free_at_s[direction])
        done = start + nbytes / self.bandwidth_bytes_per_s
        self._free_at_s[direction] = done
        await asyncio.sleep(max(0.0, done - time.monotonic()))
