"""What a server's memory leaves for blocks and KV once the model's ends are held.

The problem's `memory_bytes` is memory for blocks plus KV cache (the file contract). A stage
also holds the token embedding when it has block 0, and the final norm and LM head when it has
the last block (one tensor with the embedding when the two are tied and on the same stage). The
placement chooses which server holds which ends, so the problem cannot say it per server; each
server is given its node's memory less the most its ends can take on it. Both `tessera up` and
the operator build their problems with `block_memory_bytes`; the worker is then given the
node's whole memory and counts what it really loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EndWeights:
    """The weights outside the blocks, as the worker loads them (worker/blocks.py)."""

    embed_bytes: int  # the token embedding; an untied LM head is the same size again
    final_norm_bytes: int
    tied: bool

    def stage_bytes(self, *, first: bool, last: bool) -> int:
        """What a stage holds besides its blocks."""
        head = 0 if (self.tied and first) else self.embed_bytes  # tied + first: shared tensor
        return (self.embed_bytes if first else 0) + ((head + self.final_norm_bytes) if last else 0)


def block_memory_bytes(
    node_memory_bytes: int, ends: EndWeights, num_blocks: int, block_bytes: int
) -> int:
    """A server's `memory_bytes` in the problem: its node's memory for weights and KV less room
    for the ends on whichever stage it becomes. At least 1 (the problem's lower bound).

    A stage holding one end needs `one`; only a stage holding every block holds both (`both`,
    more than `one` when the head is untied). A server that cannot hold every block after
    `both` is capped below the weight of all blocks, so that the placement never makes it the
    whole model and `one` is all it must keep free."""
    one = max(ends.stage_bytes(first=True, last=False), ends.stage_bytes(first=False, last=True))
    both = ends.stage_bytes(first=True, last=True)
    below_all_blocks = num_blocks * block_bytes - 1
    memory = max(node_memory_bytes - both, min(node_memory_bytes - one, below_all_blocks))
    return max(memory, 1)
