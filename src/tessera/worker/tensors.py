"""Tensors on the wire: raw little-endian bytes, dtype and shape in headers (never JSON floats).

Hidden states may travel in a smaller dtype than the stage computes in (`encode_tensor`'s
`wire_dtype`, see the stage protocol); the shape header is always the logical `1,T,H`.
"""

from __future__ import annotations

import torch

from tessera.api import stage as wire
from tessera.errors import InvalidInput

from . import wire_codec

_DTYPES = {
    "int64": torch.int64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_TOKENS_PER_STEP = 1 << 16


def encode_tensor(t: torch.Tensor, wire_dtype: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The bytes and headers of `t`; with `wire_dtype`, in that dtype where it is smaller than
    `t`'s and holds the values (float16's range is +-65,504), else in `t`'s own dtype."""
    t = t.detach().cpu().contiguous()  # from the GPU, where there is one: the wire is bytes
    shape = ",".join(str(d) for d in t.shape)
    if wire_dtype == wire.WIRE_INT8_OUTLIER and t.dim() == 3 and t.is_floating_point():
        packed = wire_codec.encode(t)
        if packed is not None and len(packed) < t.numel() * t.itemsize:
            return packed, {wire.HEADER_DTYPE: wire.WIRE_INT8_OUTLIER, wire.HEADER_SHAPE: shape}
    elif wire_dtype in _DTYPES and wire_dtype != "int64" and t.is_floating_point():
        narrow = _DTYPES[wire_dtype]
        if narrow.itemsize < t.itemsize and _fits(t, narrow):
            t = t.to(narrow)
    data = t.view(torch.uint8).numpy().tobytes()  # bf16 has no numpy dtype: ship the bytes
    return data, {wire.HEADER_DTYPE: _NAMES[t.dtype], wire.HEADER_SHAPE: shape}


def _fits(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Every value of `t` is within `dtype`'s finite range (no overflow to infinity)."""
    return not t.numel() or float(t.abs().max()) <= torch.finfo(dtype).max


def decode_many(
    parts: list[tuple[bytes, str, str, bool]], *, hidden_size: int, vocab_size: int
) -> list[torch.Tensor | InvalidInput]:
    """Validate and rebuild step inputs, (body, dtype, shape, tokens) each: token ids [1, T]
    or hidden states [1, T, H], or the error of that input. The values are checked in one pass
    over all of them (per input only if that pass fails), since per-input checks cost more than
    the forward's own overhead at 32 sessions."""
    out: list[torch.Tensor | InvalidInput] = []
    for body, dtype, shape, tokens in parts:
        try:
            out.append(_view(body, dtype, shape, tokens=tokens, hidden_size=hidden_size))
        except InvalidInput as exc:
            out.append(exc)
    hidden = [
        x for x, p in zip(out, parts, strict=True) if isinstance(x, torch.Tensor) and not p[3]
    ]
    ids = [x for x, p in zip(out, parts, strict=True) if isinstance(x, torch.Tensor) and p[3]]
    ok_hidden = not hidden or bool(torch.isfinite(torch.cat([h.float() for h in hidden], 1)).all())
    ok_ids = not ids or _ids_in_range(torch.cat(ids, 1), vocab_size)
    if ok_hidden and ok_ids:
        return out
    for i, (x, p) in enumerate(zip(out, parts, strict=True)):
        if isinstance(x, torch.Tensor):
            try:
                _check_values(x, p[3], vocab_size)
            except InvalidInput as exc:
                out[i] = exc
    return out


def _ids_in_range(x: torch.Tensor, vocab_size: int) -> bool:
    return int(x.min()) >= 0 and int(x.max()) < vocab_size


def _check_values(x: torch.Tensor, tokens: bool, vocab_size: int) -> None:
    if tokens and not _ids_in_range(x, vocab_size):
        raise InvalidInput("body", f"token ids must be in [0, {vocab_size})")
    if not tokens and not bool(torch.isfinite(x).all()):
        raise InvalidInput("body", "hidden states contain NaN or infinity")


def _view(body: bytes, dtype: str, shape: str, *, tokens: bool, hidden_size: int) -> torch.Tensor:
    if dtype not in wire.WIRE_DTYPES:
        raise InvalidInput(
            wire.HEADER_DTYPE, f"{dtype!r} is not one of {', '.join(wire.WIRE_DTYPES)}"
        )
    try:
        dims = tuple(int(d) for d in shape.split(","))
    except ValueError:
        raise InvalidInput(wire.HEADER_SHAPE, f"{shape!r} is not a comma-separated shape") from None
    if tokens:
        if dtype != "int64" or len(dims) != 2:
            raise InvalidInput(
                wire.HEADER_SHAPE, "the first stage takes int64 token ids of shape 1,T"
            )
    elif dtype == "int64" or len(dims) != 3 or dims[2] != hidden_size:
        raise InvalidInput(
            wire.HEADER_SHAPE, f"this stage takes float hidden states of shape 1,T,{hidden_size}"
        )
    if dims[0] != 1 or not 0 < dims[1] <= MAX_TOKENS_PER_STEP:
        raise InvalidInput(wire.HEADER_SHAPE, f"batch must be 1 and T in 1..{MAX_TOKENS_PER_STEP}")
    if dtype == wire.WIRE_INT8_OUTLIER:
        expected = wire_codec.nbytes(dims[1], dims[2])
    else:
        expected = torch.Size(dims).numel() * _DTYPES[dtype].itemsize
    if len(body) != expected:
        raise InvalidInput("body", f"{len(body)} bytes, but {dtype} of shape {shape} is {expected}")
    if dtype == wire.WIRE_INT8_OUTLIER:
        return wire_codec.decode(body, dims[1], dims[2])
    return torch.frombuffer(bytearray(body), dtype=_DTYPES[dtype]).view(dims)
