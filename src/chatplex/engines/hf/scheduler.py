"""Who runs in the next step. Plain Python: no tensors here, so it is tested without torch.

Policy: first come, first served, continuous batching with chunked prefill.
  1. Every running sequence that is decoding gets its one token (they are cheap and keep streams flowing).
  2. Running sequences still in prefill continue with a chunk of the remaining token budget.
  3. Waiting sequences are admitted in arrival order while a slot, budget and KV blocks are free.
When a decoding sequence needs a block and none is free, the most recently admitted sequence is preempted: its
blocks are freed and it goes back to the front of the queue, to be recomputed later (its output is kept).
A sequence being admitted first takes the cached blocks its tokens start with (block_manager.py): its prefill
starts after them, and a preempted one recomputes only what was evicted meanwhile.

With async scheduling the engine schedules step N+1 before step N's sampled tokens reach the host: those
tokens are pending (`Sequence.num_pending`) and count as positions, so a decoding sequence decodes its pending
token. A sequence whose pending token is its last (`is_draining`) is left out until that token arrives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from chatplex.engines.hf.block_manager import BlockManager
from chatplex.engines.hf.sequence import Sequence, SequenceStatus
from chatplex.types import FinishReason


@dataclass
class ScheduledSeq:
    seq: Sequence
    start: int  # first position computed in this step
    num_tokens: int  # how many positions
    samples: bool = False  # this step reaches the sequence's last token, so a new token is sampled

    def __post_init__(self) -> None:
        self.samples = self.start + self.num_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(
        self, blocks: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int, chunk_align: int = 0
    ) -> None:
        self.blocks = blocks
        # Non-zero (batch_invariant): a prefill chunk ends at a multiple of this position of its sequence (or at its
        # end) and waits for a step with room for all of it, so how a prompt is cut never depends on its company.
        self.chunk_align = chunk_align
        self.max_num_seqs = max_num_seqs
        # Every running sequence must be able to decode in every step, so the budget covers them all.
        self.max_num_batched_tokens = max(max_num_batched_tokens, max_num_seqs)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence (done, or aborted) and free its blocks."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        """Give back a sequence's blocks; it starts again from its cached prefix when it is next admitted."""
        self.blocks.free(seq)
        seq.num_computed_tokens = 0

    def schedule(self) -> tuple[list[ScheduledSeq], list[Sequence]]:
        """Pick this step's work. Returns (scheduled chunks, sequences ended because the cache cannot hold them)."""
        budget = self.max_num_batched_tokens
        batch: list[ScheduledSeq] = []
        too_long: list[Sequence] = []
        for seq in [s for s in self.running if s.num_uncomputed == 1 and not s.is_draining]:
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            while not self.blocks.can_grow(seq, seq.num_tokens):
                victim = self.running[-1]
                if victim is seq and len(self.running) == 1:
                    too_long.append(seq)  # alone and still no room: the cache is smaller than this sequence
                    break
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING and seq not in too_long:
                self.blocks.grow(seq, seq.num_tokens)
                batch.append(ScheduledSeq(seq, seq.num_computed_tokens, 1))
                budget -= 1
        for seq in too_long:
            self.finish(seq, "length")
        for seq in [s for s in self.running if s.num_uncomputed > 1]:
            n = self._chunk(seq, budget)
            if n == 0:
                break
            if not self.blocks.can_grow(seq, seq.num_computed_tokens + n):
                break
            self.blocks.grow(seq, seq.num_computed_tokens + n)
            batch.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.is_draining:
                break  # preempted with its last token in flight: it finishes when that token arrives
            self.blocks.take_cached_prefix(seq)
            n = self._chunk(seq, budget)
            if n == 0 or not self.blocks.can_grow(seq, seq.num_computed_tokens + n):
                self._release(seq)
                break
            self.waiting.popleft()
            self.blocks.admitted(seq)
            self.blocks.grow(seq, seq.num_computed_tokens + n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
        return batch, too_long

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """How many of `seq`'s uncomputed tokens run this step (0: none fit)."""
        if not self.chunk_align:
            return max(min(seq.num_uncomputed, budget), 0)
        to_boundary = self.chunk_align - seq.num_computed_tokens % self.chunk_align
        n = min(seq.num_uncomputed, to_boundary)
        return n if n <= budget else 0

    def complete_step(self, batch: list[ScheduledSeq], sampled: list[Sequence]) -> None:
        """Record a launched step: its positions are in the cache, and each sequence in `sampled` has one more
        token pending (sampled on the device, not yet known on the host)."""
        for item in batch:
            item.seq.num_computed_tokens = item.start + item.num_tokens
            self.blocks.register(item.seq)
        for seq in sampled:
            seq.num_pending += 1

    @staticmethod
    def token_arrived(seq: Sequence) -> bool:
        """The oldest pending token of `seq` reached the host; False if the sequence finished meanwhile (then the
        token is dropped)."""
        seq.num_pending -= 1
        return not seq.is_finished
