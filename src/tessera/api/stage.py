"""The stage protocol between the router and a worker (HTTP/1.1, keep-alive), as wire models.

Routes on a worker (all under one port):

- `POST /v1/sessions` body `OpenSession` -> 200 `SessionOpened`; 429 `StageError` with a
  `Retry-After` header when the worker has no KV slot for it; 400 for a bad block range.
- `POST /v1/sessions/{session_id}/step`: the body is a raw little-endian tensor, described by
  headers `x-dtype` (int64 for token ids, float32/bfloat16/float16 for hidden states),
  `x-shape` (comma-separated, `1,T` or `1,T,H`) and `x-position` (position of the first input
  token; at most the session's current length: a smaller one rewinds the KV cache, which makes a
  retried or replayed step idempotent). The last stage also reads `x-temperature`, `x-top-p`
  and `x-seed`. The answer is a raw tensor with the same `x-dtype`/`x-shape` headers, or, from
  the stage that ends at the last block, JSON `StepToken`.
  Step answers carry `x-compute-s` (the step's compute time, for hop-overhead accounting).
  404 unknown session, 409 position ahead of the session, 400 malformed tensor.
- `POST /v1/sessions/{session_id}/close` -> 200 `SessionClosed` (idempotent).
- `GET /state` -> `StageState`; `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus).

When the worker has a deployment token (`--token-file` or `TESSERA_WORKER_TOKEN`), every route
but the probes (`/healthz`, `/readyz`, `/metrics`) requires `authorization: Bearer <token>` and
answers 401 `StageError` without it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

HEADER_DTYPE = "x-dtype"
HEADER_SHAPE = "x-shape"
HEADER_POSITION = "x-position"
HEADER_TEMPERATURE = "x-temperature"
HEADER_TOP_P = "x-top-p"
HEADER_SEED = "x-seed"
HEADER_COMPUTE_S = "x-compute-s"  # in step answers: the stage's compute seconds for the step
HEADER_AUTHORIZATION = "authorization"  # `Bearer <deployment token>` on every call but probes
TENSOR_MEDIA_TYPE = "application/octet-stream"
WIRE_DTYPES = ("int64", "float32", "bfloat16", "float16")


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


class StepToken(_Wire):
    token: int
    logprob: float
    position: int  # position of the sampled token


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
    max_length: int  # tokens of one KV slot
    total_slots: int  # (block, session) KV slots that fit beside the weights
    free_slots: int
    active_sessions: int
    decode_s_per_block: float  # measured at start-up, times the speed factor
    prefill_s_per_block_per_token: float
    weight_bytes: int
    memory_bytes: int
    ready: bool
