"""Automatic prefix caching in the block manager and scheduler, in plain Python (no torch): which blocks are
shared, when they are registered, how they are evicted. The engine-level tests (outputs equal with and without the
cache, LoRA, media, usage and metrics) are in test_prefix_cache_engine.py."""

from __future__ import annotations

from chatplex.engines.hf.block_manager import BlockManager
from chatplex.engines.hf.scheduler import Scheduler
from chatplex.engines.hf.sequence import Sequence
from chatplex.types import SamplingParams

ROOT = b"root"


def seq(tokens: list[int], request: str = "r", key: bytes | None = ROOT) -> Sequence:
    s = Sequence(request, 0, list(tokens), len(tokens), SamplingParams(), max_new_tokens=100)
    s.cache_key = key
    return s


def scheduler(num_blocks: int = 32, block_size: int = 4, *, caching: bool = True, step: int = 64) -> Scheduler:
    blocks = BlockManager(num_blocks, block_size, reserved=1, prefix_caching=caching)
    return Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=step)


def run_step(s: Scheduler):
    batch, _ = s.schedule()
    s.complete_step(batch, [])
    for item in batch:
        if item.samples:
            item.seq.token_ids.append(1000 + len(item.seq.token_ids))
    return batch


def prefill_of(batch, x: Sequence) -> tuple[int, int]:
    return next((it.start, it.num_tokens) for it in batch if it.seq is x)


def test_a_later_request_with_the_same_prefix_computes_only_the_rest():
    s = scheduler()
    system = list(range(12))  # three full blocks of 4
    a = seq(system + [50, 51], "a")
    s.add(a)
    assert prefill_of(run_step(s), a) == (0, 14)
    b = seq(system + [60, 61, 62], "b")
    s.add(b)
    assert prefill_of(run_step(s), b) == (12, 3)  # its first 12 tokens came from a's blocks
    assert b.block_table[:3] == a.block_table[:3] and b.block_table[3] != a.block_table[3]
    assert b.num_cached_tokens == 12 and a.num_cached_tokens == 0
    assert (s.blocks.queried_tokens, s.blocks.hit_tokens) == (14 + 15, 12)


def test_shared_blocks_outlive_one_owner_and_stay_cached_after_both():
    s = scheduler(num_blocks=9)  # 8 usable
    a, b = seq(list(range(9)), "a"), seq(list(range(9)), "b")
    s.add(a)
    run_step(s)
    s.add(b)
    run_step(s)
    shared = a.block_table[:2]
    assert b.block_table[:2] == shared
    s.finish(a, "stop")
    assert all(block not in s.blocks._free for block in shared)  # b still holds them
    s.finish(b, "stop")
    assert s.blocks.num_free_blocks == 8  # all free again, the full ones still cached
    c = seq(list(range(8)) + [99], "c")
    s.add(c)
    assert prefill_of(run_step(s), c) == (8, 1)


def test_the_last_prompt_token_is_always_computed():
    """A prompt that is all cached still runs its last token: the first output token needs its logits."""
    s = scheduler()
    a = seq(list(range(8)), "a")
    s.add(a)
    run_step(s)
    b = seq(list(range(8)), "b")
    s.add(b)
    assert prefill_of(run_step(s), b) == (4, 4)  # one whole block cached; the block with the last token is not


def test_another_key_finds_nothing():
    """The root key holds the adapter and media: the same tokens under another one are other keys and values."""
    s = scheduler()
    a = seq(list(range(9)), "a", key=b"adapter-1")
    s.add(a)
    run_step(s)
    b = seq(list(range(9)), "b", key=b"adapter-2")
    s.add(b)
    assert prefill_of(run_step(s), b) == (0, 9)
    c = seq(list(range(9)), "c", key=None)  # kept out of the cache
    s.add(c)
    assert prefill_of(run_step(s), c) == (0, 9)
    assert c.num_cached_tokens is None and c.num_registered_blocks == 0


def test_a_different_earlier_token_changes_every_later_block():
    s = scheduler()
    a = seq(list(range(13)), "a")
    s.add(a)
    run_step(s)
    b = seq([77] + list(range(1, 13)), "b")  # blocks 1 and 2 hold the same tokens as a's, after another block 0
    s.add(b)
    assert prefill_of(run_step(s), b) == (0, 13)


def test_off_means_no_sharing():
    s = scheduler(caching=False)
    a = seq(list(range(9)), "a")
    s.add(a)
    run_step(s)
    b = seq(list(range(9)), "b")
    s.add(b)
    assert prefill_of(run_step(s), b) == (0, 9)
    assert s.blocks.num_cached_blocks == 0 and b.num_cached_tokens is None


def test_generated_tokens_are_cached_too():
    """The next turn of a conversation is the last prompt plus the reply: the reply's full blocks are found."""
    s = scheduler()
    a = seq(list(range(6)), "a")
    s.add(a)
    for _ in range(6):  # prefill, then decodes: 6 + 6 tokens known, 11 computed
        run_step(s)
    turn = a.token_ids[:12]
    s.finish(a, "stop")
    b = seq(turn + [5, 5, 5], "b")
    s.add(b)
    assert prefill_of(run_step(s), b) == (8, 7)  # blocks 0-1 (tokens 0-7): the prompt and its reply's first two


def test_pending_tokens_are_not_registered():
    """With async scheduling a decode computes a token the host does not know yet: its block waits for it."""
    s = scheduler()
    a = seq(list(range(7)), "a")
    s.add(a)
    batch, _ = s.schedule()
    s.complete_step(batch, [a])  # the 8th token is sampled but pending
    batch, _ = s.schedule()
    s.complete_step(batch, [a])  # position 7 computed from the pending token
    assert a.num_computed_tokens == 8 and len(a.token_ids) == 7
    assert a.num_registered_blocks == 1  # block 1 is full on the device but its last token is unknown here
    a.token_ids.append(42)
    s.token_arrived(a)
    s.blocks.register(a)
    assert a.num_registered_blocks == 2


def test_empty_blocks_are_handed_out_before_cached_ones_and_eviction_is_lru():
    s = scheduler(num_blocks=7, step=64)  # 6 usable blocks of 4
    first = seq(list(range(8)) + [1], "first")  # 3 blocks, 2 full
    s.add(first)
    run_step(s)
    s.finish(first, "stop")
    assert s.blocks.num_cached_blocks == 2
    other = seq(list(range(100, 108)) + [1], "other")  # 3 blocks: the 4 empty ones (its 3rd is first's partial)
    s.add(other)
    run_step(s)
    assert s.blocks.num_cached_blocks == 4  # nothing of first's evicted yet
    s.finish(other, "stop")
    big = seq(list(range(200, 216)) + [1], "big")  # 5 blocks: the 2 empty, then the oldest cached: first's
    s.add(big)
    run_step(s)
    again_first = seq(list(range(8)) + [2], "again_first")
    again_other = seq(list(range(100, 108)) + [2], "again_other")
    s.finish(big, "stop")
    s.add(again_other)  # first: again_first's new blocks would evict what is left
    s.add(again_first)
    batch = run_step(s)
    # big took the 2 empty blocks, then first's 2 and other's second (the last blocks of a sequence go first)
    assert prefill_of(batch, again_other) == (4, 5)
    assert prefill_of(batch, again_first) == (0, 9)


def test_a_preempted_sequence_resumes_from_its_cached_blocks():
    s = scheduler(num_blocks=4, step=64)  # 3 usable blocks of 4
    old, new = seq(list(range(4)), "old"), seq(list(range(50, 58)), "new")
    s.add(old)
    s.add(new)
    run_step(s)  # old: 1 block (+1 token sampled), new: 2 blocks (full: registered)
    batch = run_step(s)  # old needs a 2nd block: none free -> new is preempted, its full blocks stay cached
    assert [it.seq.request_id for it in batch] == ["old"] and s.num_preemptions == 1
    s.finish(old, "stop")
    batch = run_step(s)
    # old's new block was new's last one (a sequence's last blocks are evicted first); its first block is found
    assert prefill_of(batch, new) == (4, 5)
    assert new.num_cached_tokens == 0  # usage reports the first admission


def test_a_cache_limit_stops_the_prefix():
    s = scheduler()
    a = seq(list(range(13)), "a")
    s.add(a)
    run_step(s)
    b = seq(list(range(13)), "b")
    b.cache_limit = 6  # e.g. an image that must be computed whole starts at position 6
    s.add(b)
    assert prefill_of(run_step(s), b) == (4, 9)


def test_reset_forgets_unreferenced_blocks_only():
    s = scheduler()
    a, b = seq(list(range(9)), "a"), seq(list(range(20, 29)), "b")
    s.add(a)
    s.add(b)
    run_step(s)
    s.finish(a, "stop")
    assert s.blocks.reset_prefix_cache() == 2  # a's two full blocks; b's are referenced and stay
    c, d = seq(list(range(9)), "c"), seq(list(range(20, 29)), "d")
    s.add(c)
    s.add(d)
    batch = run_step(s)
    assert prefill_of(batch, c) == (0, 9) and prefill_of(batch, d) == (8, 1)


def test_an_admission_that_does_not_fit_gives_its_hits_back():
    s = scheduler(num_blocks=5, step=64)  # 4 usable
    a = seq(list(range(8)) + [1], "a")  # 3 blocks
    s.add(a)
    run_step(s)
    b = seq(list(range(8)) + list(range(300, 310)), "b")  # 2 cached + 3 new blocks: only 1 free
    s.add(b)
    run_step(s)
    assert b in s.waiting and b.block_table == [] and b.num_computed_tokens == 0
    assert s.blocks.num_free_blocks == 1 and [s.blocks._refs[x] for x in a.block_table] == [1, 1, 1]
