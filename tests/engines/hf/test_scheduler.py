"""The scheduler and block manager are plain Python: tested here without torch."""

from __future__ import annotations

import sys

from chatplex.engines.hf.block_manager import BlockManager
from chatplex.engines.hf.scheduler import Scheduler
from chatplex.engines.hf.sequence import Sequence, SequenceStatus
from chatplex.types import SamplingParams


def seq(prompt_len: int, request: str = "r") -> Sequence:
    return Sequence(request, 0, list(range(prompt_len)), prompt_len, SamplingParams(), max_new_tokens=100)


def run_step(s: Scheduler):
    batch, too_long = s.schedule()
    s.complete_step(batch, [])  # nothing pending: the test appends each sampled token itself
    for item in batch:
        if item.samples:
            item.seq.token_ids.append(7)  # what the engine does with a sampled token
    return batch, too_long


def test_scheduler_imports_no_torch():
    """In a fresh interpreter (this one has torch loaded by other tests), importing the scheduler and the block
    manager loads no torch: they stay testable and usable without it."""
    import subprocess

    code = ("import sys, chatplex.engines.hf.scheduler, chatplex.engines.hf.block_manager; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_blocks_grow_with_the_sequence_and_return_when_freed():
    blocks = BlockManager(num_blocks=4, block_size=4)
    s = seq(6)
    blocks.grow(s, 6)
    assert len(s.block_table) == 2
    blocks.grow(s, 8)
    assert len(s.block_table) == 2  # 8 tokens still fit in two blocks of 4
    blocks.grow(s, 9)
    assert len(s.block_table) == 3
    blocks.free(s)
    assert blocks.num_free_blocks == 4 and s.block_table == []


def test_new_requests_join_a_running_batch():
    s = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=64)
    a = seq(5, "a")
    s.add(a)
    batch, _ = run_step(s)
    assert [(it.seq, it.num_tokens, it.samples) for it in batch] == [(a, 5, True)]
    b = seq(3, "b")
    s.add(b)
    batch, _ = run_step(s)
    # a decodes one token while b's whole prompt is prefilled in the same step
    assert [(it.seq.request_id, it.num_tokens) for it in batch] == [("a", 1), ("b", 3)]
    batch, _ = run_step(s)
    assert sorted(it.seq.request_id for it in batch) == ["a", "b"] and all(it.num_tokens == 1 for it in batch)


def test_long_prompt_is_prefilled_in_chunks_without_stalling_decodes():
    s = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=8)
    a = seq(2, "a")
    s.add(a)
    run_step(s)
    long = seq(20, "long")
    s.add(long)
    chunks = []
    for _ in range(3):
        batch, _ = run_step(s)
        assert any(it.seq is a and it.num_tokens == 1 for it in batch), "a must decode every step"
        chunks += [it.num_tokens for it in batch if it.seq is long]
    assert chunks == [7, 7, 6]
    assert long.num_computed_tokens == 20 and long.num_tokens == 21  # last chunk sampled a token


def test_admission_respects_max_num_seqs_and_order():
    s = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=64)
    seqs = [seq(3, f"r{i}") for i in range(4)]
    for x in seqs:
        s.add(x)
    batch, _ = run_step(s)
    assert [it.seq.request_id for it in batch] == ["r0", "r1"]
    s.finish(seqs[0], "stop")
    batch, _ = run_step(s)
    assert [it.seq.request_id for it in batch] == ["r1", "r2"]


def test_out_of_blocks_preempts_the_newest_and_resumes_it():
    blocks = BlockManager(num_blocks=3, block_size=4)
    s = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=64)
    old, new = seq(4, "old"), seq(4, "new")
    s.add(old)
    s.add(new)
    run_step(s)  # both prefilled: 2 blocks used, each has 5 tokens now
    batch, _ = run_step(s)  # old needs a 2nd block (1 free) -> fine; new needs one too -> preempt new
    assert [it.seq.request_id for it in batch] == ["old"]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0 and new.block_table == []
    assert s.num_preemptions == 1
    assert new.num_tokens == 5  # its sampled token is kept and recomputed later
    s.finish(old, "stop")
    batch, _ = run_step(s)
    assert [(it.seq.request_id, it.num_tokens, it.samples) for it in batch] == [("new", 5, True)]


def test_a_sequence_bigger_than_the_whole_cache_ends_with_length():
    s = Scheduler(BlockManager(num_blocks=2, block_size=4), max_num_seqs=4, max_num_batched_tokens=64)
    a = seq(8, "a")
    s.add(a)
    run_step(s)  # 8 tokens fill both blocks, a 9th token was sampled
    _, too_long = run_step(s)
    assert too_long == [a] and a.finish_reason == "length"
    assert s.blocks.num_free_blocks == 2 and not s.has_work


def test_abort_frees_blocks_of_waiting_and_running():
    blocks = BlockManager(16, 4)
    s = Scheduler(blocks, max_num_seqs=1, max_num_batched_tokens=64)
    a, b = seq(5, "a"), seq(5, "b")
    s.add(a)
    s.add(b)
    run_step(s)
    s.finish(a, "abort")
    s.finish(b, "abort")
    assert blocks.num_free_blocks == 16 and not s.has_work
    assert a.finish_reason == b.finish_reason == "abort"


def test_aligned_chunks_end_at_fixed_positions_and_wait_for_room():
    """batch_invariant: a prompt is cut at multiples of chunk_align whatever else runs, and a chunk that does not
    fit beside this step's decodes waits for the next step instead of shrinking."""
    s = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=8, chunk_align=6)
    a = seq(2, "a")
    s.add(a)
    run_step(s)
    long = seq(14, "long")
    s.add(long)
    chunks = []
    for _ in range(3):
        batch, _ = run_step(s)
        chunks += [(it.start, it.num_tokens) for it in batch if it.seq is long]
    assert chunks == [(0, 6), (6, 6), (12, 2)]
    b, c = seq(5, "b"), seq(5, "c")
    s.add(b)
    s.add(c)
    batch, _ = run_step(s)
    # a and long decode (2), b's prompt fits whole (5); c's 5 would not fit the last 1: it waits, uncut
    assert [(it.seq.request_id, it.num_tokens) for it in batch] == [("a", 1), ("long", 1), ("b", 5)]
    batch, _ = run_step(s)
    assert ("c", 5) in [(it.seq.request_id, it.num_tokens) for it in batch]
