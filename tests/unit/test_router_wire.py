"""The router asks each stage for the wire dtype of the boundary after it (the smaller of the
two links' dtypes), relays what comes back untouched, and counts the bytes of step messages."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from tessera.api import stage as wire
from tessera.router.metrics import RouterMetrics
from tessera.router.stage_client import StageClient, Tensor, _Reply

from .datapath_helpers import smollm2_dir
from .router_fakes import MODEL, fake_pool, router_app


def test_each_stage_is_asked_for_the_smaller_dtype_of_the_links_its_output_crosses():
    stages = fake_pool(b={"wire_dtype": "int8-outlier"})  # only b's link is slow
    with TestClient(router_app(stages, smollm2_dir())) as c:
        body = {"model": MODEL, "prompt": "The sea is", "max_tokens": 4, "temperature": 0}
        r = c.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.headers["x-tessera-chain"] == "a>b>c"
    # a's output crosses a's and b's links; b's crosses b's and c's; c answers a token.
    assert set(stages["a"].asked_wire) == {"int8-outlier"}
    assert set(stages["b"].asked_wire) == {"int8-outlier"}
    assert set(stages["c"].asked_wire) == {None}


def test_step_messages_are_counted_in_bytes_each_way():
    metrics = RouterMetrics()
    client = StageClient("s1", "http://127.0.0.1:9", on_bytes=metrics.observe_wire)
    seen: list[wire.StepBatch] = []
    answer = wire.pack(
        wire.StepResults(
            results=[
                wire.StepOut(session_id="x", status=200, dtype="float16", shape="1,1,4", nbytes=8)
            ]
        ),
        [b"\x00" * 8],
    )
    sent: list[int] = []

    async def post(path, **kwargs):
        sent.append(len(kwargs["data"]))
        seen.append(wire.StepBatch.model_validate_json(wire.unpack(kwargs["data"])[0]))
        return _Reply(200, answer, {})

    client._post = post  # type: ignore[method-assign]
    x = Tensor(b"\x00" * 16, "float32", "1,1,4")
    out = asyncio.run(client.step("x", x, 0, None, "float16"))
    assert isinstance(out, Tensor) and out.dtype == "float16" and out.data == b"\x00" * 8
    assert seen[0].steps[0].wire_dtype == "float16"
    text = generate_latest(metrics.registry).decode()
    assert f'tessera_wire_bytes_total{{direction="sent",server="s1"}} {float(sent[0])}' in text
    received = f'tessera_wire_bytes_total{{direction="received",server="s1"}} {float(len(answer))}'
    assert received in text


def test_the_router_flag_takes_only_known_wire_dtypes():
    from tessera.cli.router import parse_wire_dtypes
    from tessera.errors import InvalidInput

    assert parse_wire_dtypes('{"far": "int8-outlier"}') == {"far": "int8-outlier"}
    assert parse_wire_dtypes(None) == {}
    for bad in ('{"far": "int4"}', "[1]", "{"):
        with pytest.raises(InvalidInput, match="--wire-dtypes"):
            parse_wire_dtypes(bad)
