"""The generation loop: relay each step of an admitted run, stream its tokens, always close.

Admission (a chain with room, or a place in the queue) is `admission.py`. A stage failure
during generation is handled by `failover.step`, and so is a straggling one (hedged); the first
token may be hedged across two chains from the start (see `failover.py`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from tessera.api.stage import StepToken

from . import failover
from .admission import GenerationParams, retry_after_s
from .chainrun import ChainRun

__all__ = ["ChainRun", "GenerationParams", "generate", "retry_after_s"]


async def generate(
    run: ChainRun,
    prompt: list[int],
    params: GenerationParams,
    policy: failover.FailoverPolicy | None = None,
) -> AsyncGenerator[StepToken, None]:
    """Prefill, then one decode step per token; stops at EOS or `max_tokens`. Always closes.

    A failed stage is replaced mid-request (`failover.step`), invisibly to the caller."""
    policy = policy or failover.FailoverPolicy()
    try:
        run.begin(prompt)
        out = await failover.step(run, prompt, 0, policy, first_token=True)
        for _ in range(params.max_tokens):
            run.advance(out.token)
            yield out
            if out.token in params.eos_ids or len(run.tokens) - len(prompt) >= params.max_tokens:
                return
            out = await failover.step(run, [out.token], len(run.tokens) - 1, policy)
    finally:
        run.close_soon()
