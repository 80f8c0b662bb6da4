"""A decode-only step over static inputs: what CUDA graphs (cuda_graphs.py) and the compiled CPU step
(cpu_decode.py) share. Both run the model from buffers sized for the largest batch, sliced to the step's rows, so
their compiled or captured code sees the same tensors every step (`DecodeStep`); `DecodeReplayer` is what the runner
needs of either.

Compiled, one compile serves every batch size: only the batch dimension is marked dynamic (and, for the compiled
CPU step, the block tables' width: StaticDecodeInputs' `trim_tables`). `torch.compile(...,
dynamic=True)`, as the CUDA-graph path had it, made every size symbolic and guarded on their coincidences (measured
on a tiny Llama: the largest bucket, the whole buffer, compiled once and the next bucket again; a batch of as many
rows as the model has KV heads failed a duck-sizing guard), and compiled several times slower than the static
shapes it now sees. A batch of one would be specialized into a second compile, so compiled steps are at least two
rows (one padding row: the step reads every weight once either way)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import torch

from chatplex.engines.hf.attention import AttentionMetadata
from chatplex.engines.hf.compile_cache import compile_step
from chatplex.engines.hf.compiled_layers import CompiledLayers
from chatplex.engines.hf.kv_cache import PagedKVCache
from chatplex.engines.hf.step_inputs import DeviceInputs


class DecodeReplayer(Protocol):
    """Runs decode-only steps of up to `max_batch` rows, padded to `bucket(rows)` (step_inputs.py)."""

    @property
    def max_batch(self) -> int: ...

    def bucket(self, batch: int) -> int: ...

    # Logits [rows, vocab]; may be a view of a static buffer, valid until the next call.
    def replay(self, inputs: DeviceInputs) -> torch.Tensor: ...

    def describe(self) -> str: ...


def decode_forward(
    model: Any,
    cache: PagedKVCache,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
) -> torch.Tensor:
    """A decode-only step through block tables: token ids and positions [1, B], cache slots [B], block tables
    [B, width], context lengths [B]; logits [B, vocab]."""
    meta = AttentionMetadata(
        cache=cache,
        slot_mapping=slots,
        num_decode=slots.shape[0],
        decode_ctx_slots=None,
        decode_positions=None,
        prefills=[],
        decode_block_tables=tables,
        decode_seq_lens=lens,
    )
    return model(input_ids=input_ids, position_ids=positions, use_cache=False, chatplex_meta=meta).logits[0]


# The smallest batch a compiled step runs (see the module docstring), and the fewest table columns it reads when
# they are trimmed.
SMALLEST_COMPILED_BATCH = 2
SMALLEST_TABLE_WIDTH = 2


class StaticDecodeInputs:
    """A decode step's inputs in buffers of `max_batch` rows and `max_blocks` block-table columns (with
    `trim_tables`, a few more: see there). Rows past a step's batch are padding (scratch block 0, one token of
    context); table columns past a row's own blocks keep stale block ids, of blocks in the cache, whose positions
    attention masks (the op reads as many blocks as the longest context fills; the traced CPU attention every column
    it is given, at least SMALLEST_TABLE_WIDTH)."""

    def __init__(self, device: torch.device, max_batch: int, max_blocks: int, trim_tables: bool = False) -> None:
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.slots = torch.zeros(max_batch, dtype=torch.long, device=device)
        if trim_tables:
            # Room for the first compile's width, which no other size has (Dynamo would tie the two), and a column
            # more than any step fills: a step's columns as whole rows would be contiguous, and Dynamo guards on that.
            max_blocks = max(max_blocks, SMALLEST_TABLE_WIDTH + 1) + 1
        self.tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)
        self.lens = torch.ones(max_batch, dtype=torch.int32, device=device)
        # `trim_tables`: steps see only the table columns their longest context fills (the traced CPU attention,
        # paged_decode.py, reads every column it is given), at least two, as a size of one would be specialized.
        self.trim_tables = trim_tables
        self.width = SMALLEST_TABLE_WIDTH + 1 if trim_tables else max_blocks

    def load(self, inputs: DeviceInputs) -> int:
        """Copy a step's inputs in; returns its number of rows."""
        size = len(inputs.input_ids)
        self.input_ids[:size].copy_(inputs.input_ids)
        self.positions[:size].copy_(inputs.positions)
        self.slots[:size].copy_(inputs.slots)
        self.lens[:size].copy_(inputs.seq_lens)
        self.tables[:size, : inputs.tables.shape[1]].copy_(inputs.tables)
        if self.trim_tables:
            self.width = max(inputs.tables.shape[1], SMALLEST_TABLE_WIDTH)
        return size

    # Where each of `rows`' tensors has its batch dimension.
    BATCH_DIMS = (1, 1, 0, 0, 0)
    TABLES = 3  # which of `rows`' tensors holds the block tables

    def rows(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """decode_forward's tensor arguments for the first `size` rows. Token ids and positions are sliced, then
        given their batch dimension of 1, so their strides follow `size` (a [1, size] view of a [1, max_batch]
        buffer has a stride of max_batch: torch.compile guarded on it and compiled again for other sizes)."""
        return (
            self.input_ids[:size][None],
            self.positions[:size][None],
            self.slots[:size],
            self.tables[:size, : self.width],
            self.lens[:size],
        )


class DecodeStep:
    """decode_forward over the first rows of `inputs`: eager, or through one torch.compile for every batch size,
    with `inductor_options` (Inductor settings) in force around every call. `per_layer`: compiled a decoder layer
    at a time (compiled_layers.py; for CUDA graphs), where the model's layers are found, else whole."""

    def __init__(
        self,
        model: Any,
        cache: PagedKVCache,
        inputs: StaticDecodeInputs,
        compile: bool,
        inductor_options: dict[str, Any] | None = None,
        fixed_model: bool = False,
        per_layer: bool = False,
    ) -> None:
        self.inputs = inputs
        self.compiled = compile
        forward: Callable[..., torch.Tensor] = functools.partial(decode_forward, model, cache)
        assert not (per_layer and (inductor_options or fixed_model)), "a step compiled per layer takes neither"
        self.compiled_layers = CompiledLayers.install(model, cache) if compile and per_layer else None
        if compile and self.compiled_layers is None:
            forward = compile_step(forward, fixed_model, inductor_options)
        self._forward = forward

    def __call__(self, size: int) -> torch.Tensor:
        rows = self.inputs.rows(size)
        if not self.compiled:
            return self._forward(*rows)
        for tensor, dim in zip(rows, StaticDecodeInputs.BATCH_DIMS):
            torch._dynamo.mark_dynamic(tensor, dim)
        if self.inputs.trim_tables:
            torch._dynamo.mark_dynamic(rows[StaticDecodeInputs.TABLES], 1)
        if self.compiled_layers is None:
            return self._forward(*rows)
        with self.compiled_layers.running():
            return self._forward(*rows)
