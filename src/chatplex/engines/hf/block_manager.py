"""KV-cache block bookkeeping in plain Python: which fixed-size blocks of cache slots each sequence owns.

A block holds `block_size` consecutive tokens of one sequence (step_inputs.slots_of maps a position to its slot).
"""

from __future__ import annotations

from collections import deque

from chatplex.engines.hf.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, reserved: int = 0) -> None:
        """`reserved` blocks at the start are never handed out (CUDA-graph padding rows write there)."""
        if num_blocks - reserved <= 0:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks - reserved
        self.block_size = block_size
        self._free: deque[int] = deque(range(reserved, num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def extra_blocks(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks `seq` still needs to hold its first `num_tokens` tokens."""
        return max(self.blocks_for(num_tokens) - len(seq.block_table), 0)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.extra_blocks(seq, num_tokens) <= len(self._free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        for _ in range(self.extra_blocks(seq, num_tokens)):
            seq.block_table.append(self._free.popleft())

    def free(self, seq: Sequence) -> None:
        self._free.extend(seq.block_table)
        seq.block_table = []
