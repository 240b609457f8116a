"""The router's serving layer, part by part: the slot book, the stage directory across a plan
reload, the admission queue, the renderers, and the one handler for the error vocabulary."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from tessera.api.stage import StepToken
from tessera.errors import Busy, InvalidInput, TesseraError, Unavailable
from tessera.router.admission import AdmissionQueue, GenerationParams
from tessera.router.chains import LiveChains
from tessera.router.errors import ClientGone, install_error_handlers
from tessera.router.render import ChatRenderer, CompletionRenderer, usage
from tessera.router.slots import RoomSignal, SlotBook, StageKey

from .router_fakes import LAYOUT, FakeStage, fake_pool, problem_and_plan

PARAMS = GenerationParams(max_tokens=8, temperature=0.0, top_p=1.0, seed=1, eos_ids=frozenset())


def test_the_slot_book_corrects_the_polled_state_with_our_opens_and_closes():
    async def scenario() -> None:
        stage = FakeStage("a", 0, 10, total_slots=10)
        state = await stage.state()
        book = SlotBook(RoomSignal())
        key = StageKey("a", 0)
        book.opened(key, "s1", 3, expected_end_s=5.0)
        assert book.loads([(key, state)], now_s=1.0)["a"].free_slots == 7
        assert book.loads([(key, state)], now_s=1.0)["a"].sessions == ((4.0, 3),)
        book.rebase(key)  # a fresh poll: the delta goes, our held slots still bound the room
        assert book.loads([(key, state)], now_s=1.0)["a"].free_slots == 7
        book.refused(key, state.free_slots)  # the worker said busy: no room until the next poll
        assert book.loads([(key, state)], now_s=1.0)["a"].free_slots == 0
        assert book.holds(key) and book.running_remaining_s([key], 1.0) == [4.0]
        book.closed("a", "s1")
        assert not book.holds(key) and book.running_remaining_s([key], 1.0) == []

    asyncio.run(scenario())


def test_a_close_reaches_a_retired_stage_of_the_same_name_and_not_its_successor():
    book = SlotBook(RoomSignal())
    old, new = StageKey("a", 0), StageKey("a", 1)
    book.opened(old, "s1", 2, 1.0)
    book.opened(new, "s2", 2, 1.0)
    book.closed("a", "s1")
    assert not book.holds(old) and book.holds(new)


def test_a_reload_retires_a_replaced_stage_until_its_last_session_closes():
    async def scenario() -> None:
        problem, plan = problem_and_plan()
        clients = {n: FakeStage(n, *LAYOUT[n]) for n in LAYOUT}
        chains = LiveChains(problem, plan, clients)  # type: ignore[arg-type]
        await chains.directory.poll_once()
        chains.opened("b", "req-1", 10, 100.0)
        moved = {**clients, "b": FakeStage("b", *LAYOUT["b"])}  # b at a new address
        await chains.directory.replace(problem, plan, moved)  # type: ignore[arg-type]
        assert chains.directory.client("b") is moved["b"]  # new requests: the new client
        assert clients["b"] in chains.directory.stage_clients()  # the running request's: still held
        chains.slots.closed("b", "req-1")
        await chains.directory.poll_once()
        assert clients["b"] not in chains.directory.stage_clients()

    asyncio.run(scenario())


def test_the_queue_count_is_released_when_a_wait_ends_in_busy():
    async def scenario() -> tuple[int, int]:
        problem, plan = problem_and_plan()
        stages = fake_pool(**{n: {"total_slots": 0} for n in LAYOUT})  # full everywhere
        chains = LiveChains(problem, plan, stages)  # type: ignore[arg-type]
        await chains.directory.poll_once()
        queue = AdmissionQueue(max_wait_s=0.3, max_queue=1)
        first = asyncio.create_task(queue.admit(chains, 4, PARAMS))
        await asyncio.sleep(0.05)
        seen = queue.waiting
        with pytest.raises(Busy, match="already waiting"):  # the queue is full: at once
            await queue.admit(chains, 4, PARAMS)
        with pytest.raises(Busy):
            await first
        return seen, queue.waiting

    assert asyncio.run(scenario()) == (1, 0)


def test_without_a_complete_chain_admission_is_unavailable():
    async def scenario() -> None:
        problem, plan = problem_and_plan()
        stages = fake_pool()
        for s in stages.values():
            s.dead = True
        chains = LiveChains(problem, plan, stages)  # type: ignore[arg-type]
        await chains.directory.poll_once()
        with pytest.raises(Unavailable):
            await AdmissionQueue(max_wait_s=0.0).admit(chains, 4, PARAMS)

    asyncio.run(scenario())


class _Pieces:
    def token_bytes(self, token: int) -> bytes:
        return str(token).encode()

    def token_text(self, token: int) -> str:
        return str(token)


def test_renderers_share_usage_and_keep_their_stream_state():
    outs = [StepToken(token=7, logprob=-0.5, position=1)]
    used = usage(3, 2)
    assert (used.prompt_tokens, used.completion_tokens, used.total_tokens) == (3, 2, 5)
    chat = ChatRenderer(_Pieces(), "m", ChatRenderer.new_id(), 1, logprobs=True)
    assert chat.rid.startswith("chatcmpl-")
    whole = chat.whole("hi", "stop", outs, used).model_dump()
    assert whole["usage"] == used.model_dump() and whole["choices"][0]["logprobs"]
    first, second = chat.chunk("a", None, outs).model_dump(), chat.chunk(None, "stop", [])
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert second.model_dump()["choices"][0]["delta"]["role"] is None  # the role once only
    assert chat.usage_chunk(used).model_dump()["usage"] == used.model_dump()

    text = CompletionRenderer(_Pieces(), "m", CompletionRenderer.new_id(), 1, logprobs=True)
    a = text.chunk("x", None, outs).model_dump()["choices"][0]["logprobs"]
    b = text.chunk("y", None, outs).model_dump()["choices"][0]["logprobs"]
    assert a["text_offset"] == [0] and b["text_offset"] == [1]  # carried across chunks
    assert text.chunk(None, "length", []).model_dump()["choices"][0]["text"] == ""
    assert text.usage_chunk(used).model_dump()["usage"] == used.model_dump()


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (InvalidInput("temperature", "too hot"), 400, "invalid_value"),
        (Busy("full", retry_after_s=2.5), 429, "no_capacity"),
        (Unavailable("no chain"), 503, "no_chain"),
        (TesseraError("odd"), 500, None),
    ],
)
def test_the_one_handler_renders_raised_errors_as_openai_bodies(
    exc: TesseraError, status: int, code: str | None
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fail")
    async def fail() -> None:
        raise exc

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            return await client.get("/fail")

    r = asyncio.run(call())
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"] == str(exc)
    if status == 429:
        assert r.headers["retry-after"] == "3"


def test_a_client_that_left_gets_a_bare_499():
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/gone")
    async def gone() -> None:
        raise ClientGone()

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            return await client.get("/gone")

    r = asyncio.run(call())
    assert r.status_code == 499 and r.content == b""
