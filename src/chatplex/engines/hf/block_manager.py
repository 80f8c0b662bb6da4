"""KV-cache block bookkeeping in plain Python: which fixed-size blocks of cache slots each sequence owns, and which
full blocks hold a known prefix that later requests can reuse (automatic prefix caching).

A block holds `block_size` consecutive tokens of one sequence (step_inputs.slots_of maps a position to its slot).

Prefix caching: a full block's content is named by a hash chained over every token before it and the sequence's
`cache_key` (its LoRA adapter and media: the same tokens under another adapter or beside another image are other
keys and values). A computed full block is registered under its hash; a new sequence whose prompt starts with the
same blocks takes them instead of computing them (reference-counted: a block is shared, never written again, since
a sequence only writes past its last full block). A block nobody references stays in the free pool with its
content: it is evicted (its hash forgotten) only when the pool hands it out again, least recently freed first, and
blocks that hold nothing reusable are handed out before any cached one.

Hashes are BLAKE2b over the token ids, so two prompts cannot be made to collide and read each other's cache.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from chatplex.engines.hf.sequence import Sequence


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    """The name of a block holding `tokens` after the prefix named `parent`."""
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, reserved: int = 0, prefix_caching: bool = False) -> None:
        """`reserved` blocks at the start are never handed out (CUDA-graph padding rows write there)."""
        if num_blocks - reserved <= 0:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks - reserved
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        # Unreferenced blocks in the order they are handed out: empty ones at the front, cached ones behind them from
        # least to most recently freed (an OrderedDict: a cache hit takes a block out of the middle in O(1)).
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(reserved, num_blocks))
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}  # block -> the hash it is registered under
        self._block_of: dict[bytes, int] = {}  # hash -> block
        self.queried_tokens = 0  # prompt tokens looked up in the cache (new requests)
        self.hit_tokens = 0  # of those, tokens found there

    @property
    def num_free_blocks(self) -> int:
        """Blocks a sequence can get now: empty ones and cached ones nobody references (evicted when taken)."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._block_of)

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
            block, _ = self._free.popitem(last=False)
            self._forget(block)
            self._refs[block] = 1
            seq.block_table.append(block)

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s blocks (finished or preempted), first registering those it filled."""
        self.register(seq)
        # Its last blocks first: they are the least likely to be shared, so they are evicted first.
        for block in reversed(seq.block_table):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
                if block not in self._hash_of:
                    self._free.move_to_end(block, last=False)  # nothing to keep: hand it out before cached ones
        seq.block_table = []
        seq.num_registered_blocks = 0

    # ---- prefix caching ----------------------------------------------------------------------------------------
    def take_cached_prefix(self, seq: Sequence) -> int:
        """Give a sequence that has nothing computed the cached blocks its tokens start with; returns how many
        tokens they hold (counted as computed). At least one token is always left to compute (its logits)."""
        if not self.prefix_caching or seq.cache_key is None or seq.block_table:
            return 0
        limit = len(seq.token_ids) - 1
        if seq.cache_limit is not None:
            limit = min(limit, seq.cache_limit)
        hits: list[int] = []
        for h in self._hashes(seq, limit // self.block_size):
            block = self._block_of.get(h)
            if block is None:
                break
            hits.append(block)
        for block in hits:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1
        seq.block_table = hits
        seq.num_registered_blocks = len(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        return seq.num_computed_tokens

    def admitted(self, seq: Sequence) -> None:
        """Count a sequence's cached prefix once it runs: its first admission is what usage and the hit rate report
        (a recomputation after preemption is not a new query)."""
        if self.prefix_caching and seq.cache_key is not None and seq.num_cached_tokens is None:
            seq.num_cached_tokens = seq.num_computed_tokens
            self.queried_tokens += seq.prompt_len
            self.hit_tokens += seq.num_computed_tokens

    def register(self, seq: Sequence) -> None:
        """Register the full blocks of `seq` whose keys and values are computed and whose tokens are known (a
        pending token's block waits until it arrives)."""
        if not self.prefix_caching or seq.cache_key is None:
            return
        full = min(seq.num_computed_tokens, len(seq.token_ids)) // self.block_size
        if full <= seq.num_registered_blocks:
            return
        hashes = self._hashes(seq, full)
        for i in range(seq.num_registered_blocks, full):
            block, h = seq.block_table[i], hashes[i]
            if h not in self._block_of:  # else another sequence computed the same block first: keep that one
                self._block_of[h] = block
                self._hash_of[block] = h
        seq.num_registered_blocks = full

    def reset_prefix_cache(self) -> int:
        """Forget every cached block nobody references (after an adapter is unloaded, say); returns how many."""
        dropped = [block for block in self._free if block in self._hash_of]
        for block in dropped:
            self._forget(block)
            self._free.move_to_end(block, last=False)
        return len(dropped)

    def _hashes(self, seq: Sequence, count: int) -> list[bytes]:
        """The hashes of `seq`'s first `count` full blocks (computed once per sequence, as its tokens allow)."""
        hashes, size = seq.block_hashes, self.block_size
        while len(hashes) < count:
            i = len(hashes)
            parent = hashes[-1] if hashes else seq.cache_key
            assert parent is not None
            hashes.append(block_hash(parent, seq.token_ids[i * size : (i + 1) * size]))
        return hashes[:count]

    def _forget(self, block: int) -> None:
        h = self._hash_of.pop(block, None)
        if h is not None and self._block_of.get(h) == block:
            del self._block_of[h]
