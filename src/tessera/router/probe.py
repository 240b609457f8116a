"""Stage health probing on a thread of its own, so that a busy event loop cannot mark stages down.

The router's event loop can stall (a huge request to parse, a burst of work): a probe made on it
would then time out on every stage at once and mark the whole pool down. Here each stage is
probed by its own task on a private event loop in a daemon thread, through a client of its own
that the stage's client supplies (`StageClient.probe_target`: a worker's `GET /state`, vLLM's
`/metrics`), so any engine is probed here. Each answer is handed to the router's loop
(`call_soon_threadsafe`), settled there by the stage's client (what only it knows: vLLM's
sessions and calibration) and applied by `LiveChains.apply_probe`. An answer applied late (the
router's loop was stalled) is still a true answer: it says the stage was up when probed.

A stage that is down is probed every `DOWN_PROBE_S`, so a restarted or thawed stage is used
again within a fraction of a second of becoming ready.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from tessera.api.stage import StageState
from tessera.errors import TesseraError

from .directory import DOWN_PROBE_S, StageDirectory
from .stage_client import ProbeTarget

log = logging.getLogger("tessera.router")


class ProbeThread:
    def __init__(
        self, directory: StageDirectory, loop: asyncio.AbstractEventLoop, interval_s: float
    ) -> None:
        self.directory = directory
        self.router_loop = loop
        self.interval_s = interval_s
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tessera-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._set_stop)
            self._thread.join(timeout=5.0)

    def _set_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        tasks: dict[ProbeTarget, asyncio.Task[None]] = {}
        try:
            while not self._stop.is_set():
                targets = set(self.directory.probe_targets)  # swapped whole by a plan reload
                for gone in set(tasks) - targets:
                    tasks.pop(gone).cancel()
                for target in targets - set(tasks):
                    tasks[target] = asyncio.create_task(self._probe_forever(target))
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)
                except TimeoutError:
                    pass  # time to look at the targets again
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _probe_forever(self, target: ProbeTarget) -> None:
        client = target.connect()
        try:
            while True:
                started_s = time.monotonic()
                try:
                    state: StageState | TesseraError = await client.state()
                except TesseraError as exc:
                    state = exc
                try:
                    self.router_loop.call_soon_threadsafe(self._apply, target, started_s, state)
                except RuntimeError:  # the router's loop is closed: we are shutting down
                    return
                up = self.directory.is_up(target.name)
                await asyncio.sleep(self.interval_s if up else min(self.interval_s, DOWN_PROBE_S))
        finally:
            await client.aclose()

    def _apply(
        self, target: ProbeTarget, started_s: float, state: StageState | TesseraError
    ) -> None:
        """On the router's loop: the answer settled by the stage's client, then applied."""
        if isinstance(state, StageState):
            state = target.settle(state)
        self.directory.apply_probe(target.name, target.base_url, started_s, state)
