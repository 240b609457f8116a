"""The stage protocol between the router and a worker (HTTP/1.1, keep-alive), as wire models.

Routes on a worker (all under one port):

- `POST /v1/sessions` body `OpenSession` -> 200 `SessionOpened`; 429 `StageError` with a
  `Retry-After` header when the worker has no KV slot for it; 400 for a bad block range.
- `POST /v1/sessions/{session_id}/step`: the body is a raw little-endian tensor, described by
  headers `x-dtype` (int64 for token ids, float32/bfloat16/float16 for hidden states),
  `x-shape` (comma-separated, `1,T` or `1,T,H`) and `x-position` (position of the first input
  token; at most the session's current length: a smaller one rewinds the KV cache, which makes a
  retried or replayed step idempotent). The last stage also reads `x-temperature` (0 to 100;
  0 is greedy), `x-top-p` (above 0, at most 1), `x-seed` and `x-top-logprobs` (0 to 20: the
  answer's token lists that many most likely tokens with their logprobs); out of range: 400. The answer is a raw tensor with the same `x-dtype`/`x-shape` headers, or, from
  the stage that ends at the last block, JSON `StepToken`.
  Step answers carry `x-compute-s` (the step's compute time, for hop-overhead accounting).
  404 unknown session, 409 position ahead of the session, 400 malformed tensor.
- `POST /v1/steps`: several sessions' steps in one message (what the router sends: one request
  per stage per wave of steps, however many sessions are in flight). The body is
  `pack(StepBatch, payloads)`: a 4-byte little-endian length, the `StepBatch` JSON, then each
  step's tensor bytes in order. The answer (200 whenever the batch itself was readable) is
  `pack(StepResults, payloads)`, one `StepOut` per step in the same order, each with its own
  `status` (200, or the status the single-step route would give) and error.
  A step may ask for its output hidden states in a smaller wire dtype (`StepIn.wire_dtype`,
  chosen per link by `tessera.placement.wire`): `float16` (a cast; lossless in practice) or
  `int8-outlier` (per-token int8 plus the top-k channels in float16, `worker/wire_codec.py`;
  lossy, opt-in). The stage never widens: it sends its compute dtype when that is no larger,
  or when the values do not fit float16. `StepOut.dtype` says what was sent, and the router
  relays those bytes to the next stage untouched, which decodes them to its compute dtype.
- `POST /v1/sessions/{session_id}/close` -> 200 `SessionClosed` (idempotent).
- `GET /state` -> `StageState`; `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus).

When the worker has a deployment token (`--token-file` or `TESSERA_WORKER_TOKEN`), every route
but the probes (`/healthz`, `/readyz`, `/metrics`) requires `authorization: Bearer <token>` and
answers 401 `StageError` without it.
"""

from __future__ import annotations

import struct
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

HEADER_DTYPE = "x-dtype"
HEADER_SHAPE = "x-shape"
HEADER_POSITION = "x-position"
HEADER_TEMPERATURE = "x-temperature"
HEADER_TOP_P = "x-top-p"
HEADER_SEED = "x-seed"
HEADER_TOP_LOGPROBS = "x-top-logprobs"
MAX_TOP_LOGPROBS = 20  # alternatives a step's token may list
HEADER_COMPUTE_S = "x-compute-s"  # in step answers: the stage's compute seconds for the step
HEADER_AUTHORIZATION = "authorization"  # `Bearer <deployment token>` on every call but probes
TENSOR_MEDIA_TYPE = "application/octet-stream"
WIRE_INT8_OUTLIER = "int8-outlier"  # per-token int8 + top-k channels in float16 (lossy)
WireDtype = Literal["float32", "bfloat16", "float16", "int8-outlier"]  # a hidden state's wire
WIRE_DTYPES = ("int64", *get_args(WireDtype))
MAX_BATCH_STEPS = 1024  # steps in one /v1/steps message


def pages_for(tokens: int, page_tokens: int) -> int:
    """KV slots of one block that `tokens` tokens take: the unit of `StageState`'s slots."""
    return -(-tokens // page_tokens)


_LEN = struct.Struct("<I")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenSession(_Wire):
    session_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    start_block: int = Field(ge=0)
    end_block: int = Field(gt=0)
    max_length: int = Field(gt=0)


class SessionOpened(_Wire):
    session_id: str
    start_block: int
    end_block: int
    slots: int  # (block, session) KV slots this session holds


class SessionClosed(_Wire):
    session_id: str
    closed: bool  # False when the session was unknown (already closed or expired)


class TokenLogprob(_Wire):
    token: int
    logprob: float  # under the model's distribution (before temperature and top-p)


class StepToken(_Wire):
    token: int
    logprob: float  # of `token`, under the model's distribution
    position: int  # position of the sampled token
    top_logprobs: list[TokenLogprob] | None = None  # the most likely tokens, when asked for


class StageErrorBody(_Wire):
    message: str
    type: str
    code: str


class StageError(_Wire):
    error: StageErrorBody
    retry_after_s: float | None = None


class StageState(_Wire):
    name: str
    model: str
    num_blocks: int  # L of the whole model
    start_block: int
    end_block: int
    max_length: int  # the longest session (prompt plus output) the worker accepts
    total_slots: int  # KV slots (a page of `page_tokens` tokens of one block) beside the weights
    free_slots: int  # not reserved by an open session
    page_tokens: int  # tokens per KV slot
    allocated_slots: int  # slots whose memory is allocated now (at most the reserved ones)
    queued_steps: int  # steps waiting for the next batched forward
    active_sessions: int
    decode_s_per_block: float  # measured at start-up, times the speed factor
    prefill_s_per_block_per_token: float
    weight_bytes: int
    memory_bytes: int
    ready: bool


class StepIn(_Wire):
    session_id: str = Field(min_length=1, max_length=128)
    position: int = Field(ge=0)
    dtype: str
    shape: str = Field(max_length=64)
    nbytes: int = Field(ge=0)
    temperature: float | None = None  # sampling: read by the stage that ends at the last block
    top_p: float | None = None
    seed: int | None = None
    top_logprobs: int | None = None  # the last stage lists this many most likely tokens
    wire_dtype: str | None = None  # send the output hidden states in this (or smaller)

    @field_validator("wire_dtype")
    @classmethod
    def _known_wire(cls, v: str | None) -> str | None:
        if v is not None and v not in get_args(WireDtype):
            raise ValueError(f"must be one of {', '.join(get_args(WireDtype))}")
        return v


class StepBatch(_Wire):
    steps: list[StepIn] = Field(min_length=1, max_length=MAX_BATCH_STEPS)


class StepOut(_Wire):
    session_id: str
    status: int  # 200, or the HTTP status the single-step route would answer
    token: StepToken | None = None  # from the last stage
    dtype: str | None = None  # hidden states from the others: the payload slice's dtype
    shape: str | None = None
    nbytes: int = 0
    compute_s: float = 0.0
    error: StageErrorBody | None = None
    retry_after_s: float | None = None


class StepResults(_Wire):
    results: list[StepOut]


def pack(header: BaseModel, payloads: list[bytes]) -> bytes:
    head = header.model_dump_json(exclude_none=True).encode()
    return b"".join([_LEN.pack(len(head)), head, *payloads])


def unpack(body: bytes) -> tuple[bytes, memoryview]:
    """(the JSON header, the payload bytes after it); ValueError if the framing is broken."""
    if len(body) < _LEN.size:
        raise ValueError("the message is shorter than its length prefix")
    (n,) = _LEN.unpack_from(body)
    if n > len(body) - _LEN.size:
        raise ValueError(f"the header claims {n} bytes but the message has fewer")
    view = memoryview(body)
    return bytes(view[_LEN.size : _LEN.size + n]), view[_LEN.size + n :]


def split_payload(payload: memoryview, sizes: list[int]) -> list[bytes]:
    """Cut the payload into the declared sizes; ValueError if they do not add up."""
    if sum(sizes) != len(payload):
        raise ValueError(
            f"steps declare {sum(sizes)} payload bytes, the message has {len(payload)}"
        )
    out, at = [], 0
    for n in sizes:
        out.append(bytes(payload[at : at + n]))
        at += n
    return out
