"""Hidden states in a smaller wire dtype: the codec, the stage's choice and the validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tessera.api import stage as wire
from tessera.errors import InvalidInput
from tessera.worker import wire_codec
from tessera.worker.tensors import decode_many, encode_tensor

H = 576  # SmolLM2's hidden size


def _residual(tokens: int = 8, seed: int = 0) -> torch.Tensor:
    """Like SmolLM2's residual stream: a few huge channels over a body of small values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, H, generator=g) * 2.3
    x[0, :, 507] = 24_891.0
    x[0, :, 247] = -1_850.0
    x[0, 0, 14] = 922.0
    return x


def _rel_err(a: torch.Tensor, b: torch.Tensor, skip: tuple[int, ...] = (507, 247, 14)) -> float:
    keep = [c for c in range(H) if c not in skip]  # the body, where plain int8 loses
    return float((a[..., keep] - b[..., keep]).norm() / b[..., keep].norm())


def _decode(data: bytes, headers: dict[str, str]) -> torch.Tensor:
    (x,) = decode_many(
        [(data, headers[wire.HEADER_DTYPE], headers[wire.HEADER_SHAPE], False)],
        hidden_size=H,
        vocab_size=10,
    )
    assert isinstance(x, torch.Tensor)
    return x


def test_outlier_int8_keeps_the_body_where_plain_int8_loses_it():
    x = _residual()
    before = x.clone()
    outlier = wire_codec.decode(wire_codec.encode(x) or b"", 8, H)
    assert torch.equal(x, before)  # the stage's tensor is left alone
    plain = wire_codec.decode(wire_codec.encode(x, 0) or b"", 8, H, 0)
    assert _rel_err(outlier, x) < 0.01
    assert _rel_err(plain, x) > 10 * _rel_err(outlier, x)
    # The outliers themselves come back as float16 values.
    assert torch.allclose(outlier[0, :, 507], x[0, :, 507], rtol=1e-3)


def test_outlier_int8_is_at_most_055_of_float16_for_smollm2():
    x = _residual(tokens=5)
    data, headers = encode_tensor(x, wire.WIRE_INT8_OUTLIER)
    assert headers[wire.HEADER_DTYPE] == wire.WIRE_INT8_OUTLIER
    assert headers[wire.HEADER_SHAPE] == f"1,5,{H}"
    assert len(data) == wire_codec.nbytes(5, H)
    assert len(data) / (5 * H * 2) <= 0.55
    assert _rel_err(_decode(data, headers), x) < 0.01


def test_float16_is_a_cast_within_range_and_exact_compute_dtype_beyond_it():
    x = _residual()
    data, headers = encode_tensor(x, "float16")
    assert headers[wire.HEADER_DTYPE] == "float16" and len(data) == x.numel() * 2
    assert torch.equal(_decode(data, headers), x.half())
    x[0, 3, 9] = 70_000.0  # beyond float16's 65,504: it would arrive as infinity
    data, headers = encode_tensor(x, "float16")
    assert headers[wire.HEADER_DTYPE] == "float32"
    assert torch.equal(_decode(data, headers), x)


def test_an_outlier_beyond_float16_falls_back_to_the_compute_dtype():
    x = _residual()
    x[0, 2, 100] = -1e5
    data, headers = encode_tensor(x, wire.WIRE_INT8_OUTLIER)
    assert headers[wire.HEADER_DTYPE] == "float32" and torch.equal(_decode(data, headers), x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_value_that_is_not_finite_is_never_quantized(bad):
    x = _residual()
    for c in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17):  # more than k of them
        x[0, 1, c] = bad
    assert wire_codec.encode(x) is None
    x = _residual()
    x[0, 1, 3] = bad  # one: it would be an outlier, whose float16 cannot carry it either
    assert wire_codec.encode(x) is None


def test_the_stage_never_widens_and_leaves_token_ids_alone():
    x = _residual().to(torch.bfloat16)
    _, headers = encode_tensor(x, "float32")
    assert headers[wire.HEADER_DTYPE] == "bfloat16"
    _, headers = encode_tensor(x, "float16")  # same size as bfloat16: no gain, no range risk
    assert headers[wire.HEADER_DTYPE] == "bfloat16"
    ids = torch.tensor([[1, 2, 3]])
    _, headers = encode_tensor(ids, wire.WIRE_INT8_OUTLIER)
    assert headers[wire.HEADER_DTYPE] == "int64"


def test_a_bad_outlier_payload_is_an_error_of_that_input():
    x = _residual(tokens=2)
    data, headers = encode_tensor(x, wire.WIRE_INT8_OUTLIER)
    shape = headers[wire.HEADER_SHAPE]
    # Outlier channel indices start after q [T, H] and the scales [T].
    at = 2 * H + 2 * 4
    bad_index = data[:at] + (H + 5).to_bytes(2, "little") + data[at + 2 :]
    short, bad = decode_many(
        [(data[:-1], wire.WIRE_INT8_OUTLIER, shape, False),
         (bad_index, wire.WIRE_INT8_OUTLIER, shape, False)],
        hidden_size=H,
        vocab_size=10,
    )  # fmt: skip
    assert isinstance(short, InvalidInput) and "bytes" in str(short)
    assert isinstance(bad, InvalidInput) and "indices" in str(bad)


def test_a_step_can_only_ask_for_a_known_wire_dtype():
    step = {"session_id": "s", "position": 0, "dtype": "int64", "shape": "1,1", "nbytes": 8}
    assert wire.StepIn(**step, wire_dtype="int8-outlier").wire_dtype == "int8-outlier"
    with pytest.raises(ValidationError):
        wire.StepIn(**step, wire_dtype="int4")
