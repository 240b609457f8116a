"""The router's side of the stage protocol (`tessera.api.stage`): one keep-alive client per worker.

Hidden states are relayed as opaque bytes with their dtype and shape headers: the router never
decodes them (and holds no torch). aiohttp rather than httpx: on loopback its client costs about
half as much per request (measured 0.4 ms less per decode hop), and a decode step pays it once
per stage. A failed hop (connection error, timeout, 5xx) raises
`StageFailed`, which names the server so that the caller can mark it down and re-route.

Steps are coalesced: every session's step that reaches `step` in the same turn of the event
loop goes to the worker in ONE `/v1/steps` message (and its answer carries all the results),
so a wave of 32 sessions' decode steps costs one HTTP exchange per stage, not 32. The worker
runs them as one batch anyway. Each caller still gets its own result or its own error.

`wire_dtype` is the dtype the placement chose for this stage's link (`placement.wire`); a step
may ask the stage to send its output hidden states in a smaller one. The bytes of every step
message, each way, go to `on_bytes` (the router's `tessera_wire_bytes_total`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
import numpy as np
from pydantic import ValidationError

from tessera.api import stage as wire
from tessera.errors import Busy, InvalidInput, NotFound, Unavailable

log = logging.getLogger("tessera.router")


class StageFailed(Unavailable):
    """A stage did not answer properly; `server` names it."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"stage {server}: {message}")
        self.server = server


@dataclass(frozen=True)
class Tensor:
    data: bytes
    dtype: str
    shape: str

    @staticmethod
    def tokens(ids: list[int]) -> Tensor:
        return Tensor(np.asarray(ids, dtype="<i8").tobytes(), "int64", f"1,{len(ids)}")


@dataclass(frozen=True)
class StepSampling:
    temperature: float
    top_p: float
    seed: int
    top_logprobs: int = 0  # the last stage also lists this many most likely tokens


@dataclass(frozen=True)
class _Pending:
    item: wire.StepIn
    data: bytes
    future: asyncio.Future[Tensor | wire.StepToken]


@dataclass(frozen=True)
class _Reply:
    status_code: int
    content: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass(frozen=True)
class ProbeTarget:
    """How the probe thread (probe.py) probes one stage, whatever its engine, on a loop of its
    own: `connect()` makes it a client of its own there, whose `state()` it polls; each answer
    then goes through `settle` on the router's loop, where the router's client adds what only
    it knows (a vLLM client: its sessions and calibration), before it is applied."""

    name: str
    base_url: str
    connect: Callable[[], StageClient]
    settle: Callable[[wire.StageState], wire.StageState]


class StageClient:
    def __init__(
        self,
        server: str,
        base_url: str,
        *,
        timeout_s: float = 120.0,
        token: str | None = None,
        wire_dtype: str | None = None,
        on_bytes: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.server = server
        self.wire_dtype = wire_dtype  # this link's wire dtype (None: the compute dtype)
        self._on_bytes = on_bytes  # (server, bytes sent, bytes received) of each step message
        self.base_url = base_url.rstrip("/")
        self.token = token
        # The deployment token goes with every call (workers refuse calls without it).
        self._auth = {wire.HEADER_AUTHORIZATION: f"Bearer {token}"} if token else None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=3.0)
        self._session: aiohttp.ClientSession | None = None  # made lazily inside the event loop
        self.last_compute_s = 0.0  # the stage's own compute time of the last step (x-compute-s)
        self._pending: list[_Pending] = []  # steps waiting for this turn's message
        self._flights: set[asyncio.Task[None]] = set()
        self.messages_sent = 0  # /v1/steps messages (for the hop bench and tests)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.base_url,
                timeout=self._timeout,
                headers=self._auth,
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=512),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: object
    ) -> _Reply:
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
        try:
            async with self._http().request(method, path, timeout=timeout, **kwargs) as r:  # type: ignore[arg-type]
                return _Reply(
                    r.status, await r.read(), {k.lower(): v for k, v in r.headers.items()}
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StageFailed(self.server, f"{type(exc).__name__}: {exc}") from exc

    async def _post(self, path: str, **kwargs: Any) -> _Reply:
        response = await self._request("POST", path, **kwargs)
        if response.status_code >= 500:
            raise StageFailed(self.server, f"HTTP {response.status_code}: {response.text[:200]}")
        return response

    def _raise_for(self, response: _Reply) -> None:
        if response.status_code < 400:
            return
        try:
            err = wire.StageError.model_validate_json(response.content)
            message, retry = err.error.message, err.retry_after_s
        except ValidationError:
            message, retry = response.text[:200], None
        self._raise_status(response.status_code, message, retry)

    def _raise_status(self, status: int, message: str, retry: float | None) -> NoReturn:
        """The error of a stage answer with HTTP status `status` (400 or more)."""
        if status == 429:
            raise Busy(f"stage {self.server}: {message}", retry_after_s=retry or 1.0)
        if status == 404:
            raise NotFound(f"stage {self.server}: {message}")
        if status == 401:
            raise StageFailed(self.server, f"refused the router's worker token: {message}")
        # Any other 4xx is a protocol bug between router and worker, not the user's fault.
        raise StageFailed(self.server, f"HTTP {status}: {message}")

    async def open(self, session_id: str, start: int, end: int, max_length: int) -> int:
        body = wire.OpenSession(
            session_id=session_id, start_block=start, end_block=end, max_length=max_length
        )
        response = await self._post(
            "/v1/sessions",
            data=body.model_dump_json(),
            headers={"content-type": "application/json"},
        )
        self._raise_for(response)
        return wire.SessionOpened.model_validate_json(response.content).slots

    async def step(
        self,
        session_id: str,
        x: Tensor,
        position: int,
        sampling: StepSampling | None,
        wire_dtype: str | None = None,
    ) -> Tensor | wire.StepToken:
        """One session's step; sent with the other steps of this turn in one message. With
        `wire_dtype`, output hidden states come in that dtype where it is smaller."""
        item = wire.StepIn(
            session_id=session_id,
            position=position,
            dtype=x.dtype,
            shape=x.shape,
            nbytes=len(x.data),
            temperature=sampling.temperature if sampling else None,
            top_p=sampling.top_p if sampling else None,
            seed=sampling.seed if sampling else None,
            top_logprobs=(sampling.top_logprobs or None) if sampling else None,
            wire_dtype=wire_dtype,
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensor | wire.StepToken] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)  # after the steps already runnable this turn
        self._pending.append(_Pending(item, x.data, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        batch = [p for p in batch if not p.future.done()]  # callers that gave up (cancelled)
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._flights.add(task)
        task.add_done_callback(self._flights.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        """Send one message; every caller gets its result, or the message's error: never left
        waiting on a message that failed."""
        try:
            await self._exchange(batch)
        except BaseException as exc:
            error: BaseException = exc
            if isinstance(exc, ValueError):  # a broken answer (framing, JSON)
                error = StageFailed(self.server, f"a bad /v1/steps answer: {exc}")
            elif not isinstance(exc, StageFailed | Busy | NotFound):
                error = StageFailed(
                    self.server, f"step message failed: {type(exc).__name__}: {exc}"
                )
                if isinstance(exc, Exception):
                    log.exception("a step message to %s failed unexpectedly", self.server)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            if not isinstance(exc, Exception):  # cancelled (shutdown): let it propagate
                raise

    async def _exchange(self, batch: list[_Pending]) -> None:
        body = wire.pack(wire.StepBatch(steps=[p.item for p in batch]), [p.data for p in batch])
        self.messages_sent += 1
        response = await self._post(
            "/v1/steps", data=body, headers={"content-type": wire.TENSOR_MEDIA_TYPE}
        )
        if self._on_bytes is not None:
            self._on_bytes(self.server, len(body), len(response.content))
        self._raise_for(response)
        head, payload = wire.unpack(response.content)
        results = wire.StepResults.model_validate_json(head).results
        parts = wire.split_payload(payload, [r.nbytes for r in results])
        if len(results) != len(batch):
            raise StageFailed(self.server, f"{len(results)} results for {len(batch)} steps")
        for p, result, data in zip(batch, results, parts, strict=True):
            if p.future.done():
                continue
            try:
                p.future.set_result(self._one(result, data))
            except (StageFailed, Busy, NotFound) as exc:
                p.future.set_exception(exc)

    def _one(self, result: wire.StepOut, data: bytes) -> Tensor | wire.StepToken:
        if result.status != 200 or result.error is not None:
            message = result.error.message if result.error is not None else "no result"
            self._raise_status(max(result.status, 400), message, result.retry_after_s)
        self.last_compute_s = result.compute_s
        if result.token is not None:
            return result.token
        return Tensor(data, result.dtype or "", result.shape or "")

    async def close(self, session_id: str) -> None:
        response = await self._post(f"/v1/sessions/{session_id}/close")
        self._raise_for(response)

    def probe_target(self) -> ProbeTarget:
        """This stage for the probe thread (a client kind with state of its own overrides
        `_probe_client` and `settle_probe`)."""
        return ProbeTarget(self.server, self.base_url, self._probe_client, self.settle_probe)

    def _probe_client(self) -> StageClient:
        # A worker's /state is a plain GET: any client of the same URL and token can make it.
        return StageClient(self.server, self.base_url, token=self.token)

    def settle_probe(self, state: wire.StageState) -> wire.StageState:
        """A probe's answer as this stage's state (on the router's loop)."""
        return state

    async def state(self) -> wire.StageState:
        response = await self._request("GET", "/state", timeout_s=2.0)
        if response.status_code == 401:
            raise StageFailed(self.server, "/state refused the router's worker token (HTTP 401)")
        if response.status_code != 200:
            raise StageFailed(self.server, f"/state answered HTTP {response.status_code}")
        try:
            return wire.StageState.model_validate_json(response.content)
        except ValidationError as exc:
            raise InvalidInput("/state", f"stage {self.server} sent a bad state: {exc}") from exc
