"""The probe thread probes every stage, whatever its engine, through the probe that the stage's
client supplies (`probe_target`); a client whose state is partly its own (vLLM's sessions and
calibration) settles each answer on the router's loop, or the router never sees the stage up
(found when the vLLM pool waited forever for its replica)."""

from __future__ import annotations

import asyncio

from tessera.api import stage as wire
from tessera.router.chains import LiveChains
from tessera.router.probe import ProbeThread

from .router_fakes import LAYOUT, FakeStage, problem_and_plan


class _Unmeasured(FakeStage):
    """What the probe thread's own client of the stage reads: not ready (as vLLM's /metrics
    say nothing of the decode time the router's client has measured)."""

    async def state(self) -> wire.StageState:
        return (await super().state()).model_copy(update={"ready": False})


class _OwnStateStage(FakeStage):
    def _probe_client(self) -> FakeStage:
        return _Unmeasured(self.server, self.start, self.end)

    def settle_probe(self, state: wire.StageState) -> wire.StageState:
        return state.model_copy(update={"ready": True})  # measured: this client knows


def test_the_probe_thread_probes_every_engine_and_its_client_settles_the_answer():
    problem, plan = problem_and_plan()
    own = sorted(LAYOUT)[0]

    async def scenario() -> tuple[set[str], bool, dict[str, bool]]:
        clients = {n: (_OwnStateStage if n == own else FakeStage)(n, *LAYOUT[n]) for n in LAYOUT}
        chains = LiveChains(problem, plan, clients)  # type: ignore[arg-type]
        targets = {t.name for t in chains.directory.probe_targets}
        chains.directory.mark_down(own, "test")
        before = chains.directory.is_up(own)
        prober = ProbeThread(chains.directory, asyncio.get_running_loop(), interval_s=0.01)
        prober.start()
        try:
            for _ in range(300):
                if all(chains.directory.is_up(n) for n in LAYOUT):
                    break
                await asyncio.sleep(0.01)
        finally:
            prober.stop()
        return targets, before, {n: chains.directory.is_up(n) for n in LAYOUT}

    targets, before, after = asyncio.run(scenario())
    assert targets == set(LAYOUT)  # the vLLM-like stage too
    assert not before and all(after.values()), after
