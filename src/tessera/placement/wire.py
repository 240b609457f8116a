"""Which dtype hidden states cross each link in: a judgement of the placement (pure).

Hub and spoke: a stage's output goes to the router over the stage's link, then to the next
stage over that one's link. Each link gets the least lossy wire dtype whose transfer of one
design-point prompt (the workload's `max_input_tokens`, where the volume is) adds at most
`TRANSFER_SHARE` to that hop's prefill time (the link's `prefill_s` plus the server's compute
for its blocks); when none does, the smallest one allowed. In order:

1. the compute dtype: exact;
2. `float16`, when the stages compute in float32: half the bytes and lossless in practice
   (SmolLM2's largest activation, 24,891, is within float16's 65,504; a stage sends its compute
   dtype for any tensor that would overflow);
3. `int8-outlier` (per-token int8 plus the top `OUTLIER_CHANNELS` channels in float16), only
   with `lossy=True`: it changes some answers (measured on SmolLM2 in docs/wire.md).

A boundary between two stages takes the smaller of their links' dtypes (`boundary`): its bytes
cross both links.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .model import Plan, Problem
from .perf import transfer_s

FLOAT32, BFLOAT16, FLOAT16 = "float32", "bfloat16", "float16"
INT8_OUTLIER = "int8-outlier"  # the stage protocol's name (tessera.api.stage)
OUTLIER_CHANNELS = 12  # k, chosen on SmolLM2 (docs/wire.md)
TRANSFER_SHARE = 0.1  # transfer "dominates" beyond 10% of the hop's prefill time
_ITEM_BYTES = {FLOAT32: 4, BFLOAT16: 2, FLOAT16: 2}
_SMALLER = {FLOAT32: 0, BFLOAT16: 1, FLOAT16: 1, INT8_OUTLIER: 2}  # fewer bytes: higher


def bytes_per_token(wire_dtype: str, hidden_size: int, k: int = OUTLIER_CHANNELS) -> int:
    """Bytes of one token's hidden state on the wire. Outlier int8: H int8 values, a float32
    scale, and k (int16 channel, float16 value) pairs (`worker/wire_codec.py`)."""
    if wire_dtype == INT8_OUTLIER:
        return hidden_size + 4 + 4 * k
    return hidden_size * _ITEM_BYTES[wire_dtype]


def bytes_per_element(wire_dtype: str, hidden_size: int) -> float:
    return bytes_per_token(wire_dtype, hidden_size) / hidden_size


def candidates(compute_dtype: str, lossy: bool) -> list[str]:
    """Wire dtypes a link may get, least lossy first."""
    out = [compute_dtype]
    if compute_dtype == FLOAT32:
        out.append(FLOAT16)
    if lossy:
        out.append(INT8_OUTLIER)
    return out


def choose(
    *,
    compute_dtype: str,
    hidden_size: int,
    tokens: int,
    hop_s: float,
    bandwidth_bytes_per_s: float | None,
    lossy: bool = False,
) -> str:
    """One link's wire dtype: see the module's rule. No bandwidth known: the compute dtype."""
    options = candidates(compute_dtype, lossy)
    for wire_dtype in options:
        spent = transfer_s(
            tokens,
            hidden_size,
            bytes_per_element(wire_dtype, hidden_size),
            bandwidth_bytes_per_s,
        )
        if spent <= TRANSFER_SHARE * hop_s:
            return wire_dtype
    return options[-1]


def boundary(a: str | None, b: str | None) -> str | None:
    """The wire dtype of hidden states that cross two links: the one with fewer bytes."""
    if a is None or b is None:
        return a or b
    return max((a, b), key=lambda d: _SMALLER[d])


@dataclass(frozen=True)
class LinkWire:
    server: str
    wire_dtype: str
    transfer_s: float  # one design-point prompt's hidden states over the link, in that dtype
    exact_transfer_s: float  # the same in the compute dtype


def choose_wires(
    problem: Problem,
    plan: Plan,
    bandwidth_bytes_per_s: Mapping[str, float],
    *,
    hidden_size: int,
    compute_dtype: str = FLOAT32,
    lossy: bool = False,
    client: int = 0,
) -> tuple[LinkWire, ...]:
    """Each placed server's link (from `client`) and its wire dtype; links without a bandwidth
    in `bandwidth_bytes_per_s` keep the compute dtype."""
    tokens = problem.workload.max_input_tokens
    out = []
    for p in plan.placement:
        j = problem.server_index(p.server)
        compute_s = p.blocks * problem.servers[j].prefill_s_per_block.seconds(tokens)
        hop_s = problem.link(client, j).prefill_s + compute_s
        bw = bandwidth_bytes_per_s.get(p.server)
        chosen = choose(
            compute_dtype=compute_dtype,
            hidden_size=hidden_size,
            tokens=tokens,
            hop_s=hop_s,
            bandwidth_bytes_per_s=bw,
            lossy=lossy,
        )

        def cost(d: str, bw: float | None = bw) -> float:
            return transfer_s(tokens, hidden_size, bytes_per_element(d, hidden_size), bw)

        out.append(LinkWire(p.server, chosen, cost(chosen), cost(compute_dtype)))
    return tuple(out)
