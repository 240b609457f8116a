"""Which stages the probe thread probes and which the router's loop polls: a client whose state
is its own (vLLM's sessions and calibration) must be polled through that very client, or the
router never sees the stage up (found when the vLLM pool waited forever for its replica)."""

from __future__ import annotations

import asyncio

from tessera.router.chains import LiveChains

from .router_fakes import LAYOUT, FakeStage, problem_and_plan


class _OwnStateStage(FakeStage):
    probe_off_loop = False


def test_probe_thread_skips_clients_with_state_of_their_own_and_the_loop_polls_them():
    problem, plan = problem_and_plan()
    own = sorted(LAYOUT)[0]

    async def scenario() -> tuple[set[str], bool, bool]:
        clients = {n: (_OwnStateStage if n == own else FakeStage)(n, *LAYOUT[n]) for n in LAYOUT}
        chains = LiveChains(problem, plan, clients)  # type: ignore[arg-type]
        targets = {t.name for t in chains.probe_targets}
        chains.mark_down(own, "test")
        before = chains.is_up(own)
        task = asyncio.create_task(chains.housekeep_forever(0.01))
        for _ in range(200):
            if chains.is_up(own):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return targets, before, chains.is_up(own)

    targets, before, after = asyncio.run(scenario())
    assert own not in targets and targets == set(LAYOUT) - {own}
    assert not before and after  # housekeeping polled it through its own client
