"""A step's inputs as the runner builds them (step_inputs.py), for both the eager and the CUDA-graph path: every
token's position and cache slot, pending tokens filled in from the previous step's samples, and padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chatplex.engines.hf.block_manager import BlockManager
from chatplex.engines.hf.scheduler import ScheduledSeq, Scheduler
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.hf.step_inputs import StepInputs
from chatplex.types import SamplingParams

BLOCK = 4


def seq(prompt: list[int], request: str) -> Sequence:
    return Sequence(request, 0, list(prompt), len(prompt), SamplingParams(), max_new_tokens=50)


@pytest.fixture
def step():
    """Two decodes (one with a pending token) and two prefill chunks (one continuing), over block tables that
    are not in order: other sequences took and returned blocks first."""
    blocks = BlockManager(32, BLOCK, reserved=1)
    sched = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=64)
    filler = [seq(list(range(9)), f"f{i}") for i in range(3)]
    for s in filler:
        blocks.grow(s, 9)
    a, b = seq([11, 12, 13, 14, 15, 16], "a"), seq([21, 22, 23], "b")
    c, d = seq(list(range(30, 40)), "c"), seq(list(range(50, 57)), "d")
    blocks.grow(a, 7)
    blocks.free(filler[1])
    blocks.grow(b, 4)
    blocks.grow(c, 10)
    blocks.free(filler[0])
    blocks.grow(d, 7)
    for s in (a, b, c, d):
        sched.add(s)
    a.num_computed_tokens = 6  # decodes its 7th token, sampled by the previous step and still pending
    a.num_pending = 1
    b.token_ids.append(24)  # decodes its 4th token, known on the host
    b.num_computed_tokens = 3
    c.num_computed_tokens = 4  # a prefill chunk continuing at position 4
    items = [ScheduledSeq(a, 6, 1), ScheduledSeq(b, 3, 1), ScheduledSeq(c, 4, 6), ScheduledSeq(d, 0, 7)]
    return StepInputs.build(items, BLOCK, {a.seq_id: 2}), (a, b, c, d)


def slot(s: Sequence, position: int) -> int:
    return s.block_table[position // BLOCK] * BLOCK + position % BLOCK


def test_every_token_has_its_sequence_position_and_slot(step):
    inputs, (a, b, c, d) = step
    owners = [(a, 6), (b, 3)] + [(c, p) for p in range(4, 10)] + [(d, p) for p in range(7)]
    assert inputs.num_decodes == 2 and inputs.num_tokens == len(owners) == 15
    assert inputs.positions.tolist() == [p for _, p in owners]
    assert inputs.slots.tolist() == [slot(s, p) for s, p in owners]
    assert len(set(inputs.slots.tolist())) == 15 and 0 not in inputs.slots.tolist()  # distinct, none in scratch
    assert inputs.token_ids.tolist() == [0, 24, *range(34, 40), *range(50, 57)]  # a's token is pending
    assert inputs.sources is not None and inputs.sources.tolist() == [2] + [-1] * 14
    assert inputs.sample_index == [0, 1, 7, 14]
    assert inputs.context_slots(2, 10).tolist() == [slot(c, p) for p in range(10)]
    ctx = inputs.decode_context_slots()
    assert ctx.shape == (2, 7)
    assert ctx[0].tolist() == [slot(a, p) for p in range(7)]
    assert ctx[1].tolist() == [slot(b, p) for p in range(4)] + [slot(b, 3)] * 3  # clamped past its length


def test_device_inputs_fill_pending_tokens_and_pad(step):
    inputs, (a, b, *_) = step
    prev = torch.tensor([90, 91, 17, 93])  # the previous step's sampled tokens: a's is row 2
    dev = inputs.to_device(torch.device("cpu"), prev)
    assert dev.input_ids.tolist()[:2] == [17, 24]
    assert dev.tables.dtype == torch.int32 and dev.tables[:, : len(a.block_table)][0].tolist() == a.block_table
    assert dev.seq_lens.tolist() == [7, 4]

    decodes = StepInputs.build(inputs.items[:2], BLOCK, {a.seq_id: 2})
    decodes.pad(4)  # a CUDA-graph bucket of 4 rows: the dummies sit at position 0 of scratch block 0
    padded = decodes.to_device(torch.device("cpu"), prev)
    assert padded.input_ids.tolist() == [17, 24, 0, 0]
    assert padded.slots.tolist()[2:] == [0, 0] and padded.seq_lens.tolist() == [7, 4, 1, 1]
    assert padded.tables[2:].eq(0).all()
    assert decodes.num_real_tokens == 2


def test_a_scheduled_token_with_no_pending_source_is_an_error(step):
    inputs, (a, *_) = step
    with pytest.raises(RuntimeError, match="no single pending one"):
        StepInputs.build(inputs.items[:1], BLOCK, {})
    assert np.array_equal(StepInputs.build(inputs.items[1:2], BLOCK).token_ids, [24])


def test_compiled_graph_buckets_start_at_two():
    """Compiled decode graphs skip a batch size of 1 (torch.compile would specialize it: a second whole compile of
    the model at start); a single sequence replays the 2-row graph with a padding row. Uncompiled graphs keep 1."""
    from chatplex.engines.hf.cuda_graphs import bucket_sizes

    assert bucket_sizes(64, smallest=2)[:3] == [2, 4, 8] and bucket_sizes(64, smallest=2)[-1] == 64
    assert bucket_sizes(64)[:2] == [1, 2]
    assert bucket_sizes(1, smallest=2) == [2] and bucket_sizes(3, smallest=2) == [2, 3]
