"""The router's stage client coalesces one turn's steps into one /v1/steps message, gives each
caller its own result or error, and never leaves a caller waiting on a failed message."""

from __future__ import annotations

import asyncio

import pytest

from tessera.api import stage as wire
from tessera.errors import NotFound
from tessera.router.stage_client import StageClient, StageFailed, Tensor, _Reply


def _client(answer):
    client = StageClient("s", "http://127.0.0.1:9")
    sent: list[wire.StepBatch] = []

    async def post(path, **kwargs):
        assert path == "/v1/steps"
        head, payload = wire.unpack(kwargs["data"])
        batch = wire.StepBatch.model_validate_json(head)
        sent.append(batch)
        return answer(batch, payload)

    client._post = post  # type: ignore[method-assign]
    return client, sent


def _echo(batch, payload):
    """Token = position for each step; a session named `gone` is unknown (404)."""
    results = []
    for item in batch.steps:
        if item.session_id == "gone":
            err = wire.StageErrorBody(message="unknown", type="unknown_session", code="x")
            results.append(wire.StepOut(session_id=item.session_id, status=404, error=err))
        else:
            token = wire.StepToken(token=item.position, logprob=0.0, position=item.position + 1)
            results.append(wire.StepOut(session_id=item.session_id, status=200, token=token))
    return _Reply(200, wire.pack(wire.StepResults(results=results), []), {})


def test_steps_of_one_turn_go_in_one_message_and_each_gets_its_result():
    async def run():
        client, sent = _client(_echo)
        x = Tensor.tokens([1])
        calls = [client.step(f"s{i}", x, i, None) for i in range(32)]
        calls.append(client.step("gone", x, 0, None))
        out = await asyncio.gather(*calls, return_exceptions=True)
        return out, sent

    out, sent = asyncio.run(run())
    assert len(sent) == 1 and len(sent[0].steps) == 33
    assert [o.token for o in out[:32]] == list(range(32))
    assert isinstance(out[32], NotFound)


def test_a_message_that_fails_unexpectedly_fails_every_caller_as_a_stage_failure():
    def broken(batch, payload):
        raise RuntimeError("boom")

    async def run():
        client, _ = _client(broken)
        x = Tensor.tokens([1])
        return await asyncio.wait_for(
            asyncio.gather(
                *(client.step(f"s{i}", x, 0, None) for i in range(3)), return_exceptions=True
            ),
            timeout=5,
        )

    out = asyncio.run(run())
    assert all(isinstance(o, StageFailed) and "boom" in str(o) for o in out)


def test_a_short_answer_is_a_stage_failure_not_a_hang():
    def short(batch, payload):
        return _Reply(200, wire.pack(wire.StepResults(results=[]), []), {})

    async def run():
        client, _ = _client(short)
        return await asyncio.wait_for(client.step("a", Tensor.tokens([1]), 0, None), timeout=5)

    with pytest.raises(StageFailed, match="0 results for 1 steps"):
        asyncio.run(run())
