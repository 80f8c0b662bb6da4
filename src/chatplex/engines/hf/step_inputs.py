"""One step's inputs, built once on the host for both ways a step runs.

A step is one flat row of tokens: single-token decodes first, then prefill chunks (runner.py). Per token: its id
(0 where it is pending: sampled by the previous step and still on the device), its position, its cache slot, and
where a pending token comes from (its row in the previous step's sampled tokens; -1 for a known token). Per
scheduled sequence: its block table. The eager path turns these into tensors (`to_device`); the CUDA-graph path
copies the same tensors into its static buffers and replays (cuda_graphs.py).

Arrays are NumPy, so the host's work per step grows with the number of sequences, not with their lengths.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from chatplex.engines.hf.scheduler import ScheduledSeq
from chatplex.engines.hf.transfer import h2d


def slots_of(tables: np.ndarray, rows: np.ndarray | int, positions: np.ndarray, block_size: int) -> np.ndarray:
    """The cache slot of each position: position p of the sequence whose block table is `tables[row]` lives at
    offset p % block_size of block tables[row, p // block_size]. `rows` broadcasts against `positions`.

    The engine's only slot formula: token slots, decode contexts and prefill contexts all come from here."""
    return tables[rows, positions // block_size] * block_size + positions % block_size


@dataclass
class DeviceInputs:
    """A step's inputs on the device, pending tokens already filled in from the previous step's samples."""

    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    slots: torch.Tensor  # int64 [T]
    tables: torch.Tensor  # int32 [decodes, width] block tables of the decodes
    seq_lens: torch.Tensor  # int32 [decodes] context length of each decode, its new token included


@dataclass
class StepInputs:
    items: list[ScheduledSeq]  # decodes first, then prefill chunks, in the order their tokens sit in the row
    num_decodes: int
    block_size: int
    token_ids: np.ndarray  # int64 [T]
    positions: np.ndarray  # int64 [T]
    slots: np.ndarray  # int64 [T]
    sources: np.ndarray | None  # int64 [T]: row in the previous step's tokens, -1 if known; None: nothing pending
    tables: np.ndarray  # int64 [items, width], each sequence's block table padded with block 0
    offsets: np.ndarray  # int64 [items + 1]: where each item's tokens start in the row
    num_real_tokens: int  # T before padding; tokens from here on are dummies that attend to nothing

    @classmethod
    def build(
        cls, items: list[ScheduledSeq], block_size: int, pending_rows: Mapping[int, int] | None = None
    ) -> StepInputs:
        """`items` with decodes first; `pending_rows`: seq_id -> row of its pending token in the previous step's
        sampled tokens (async scheduling)."""
        token_ids: list[int] = []
        pending_at: list[int] = []
        pending_from: list[int] = []
        for it in items:
            seq = it.seq
            end = it.start + it.num_tokens
            known = len(seq.token_ids)
            if end <= known:
                token_ids.extend(seq.token_ids[it.start : end])
                continue
            token_ids.extend(seq.token_ids[it.start : known])
            row = pending_rows.get(seq.seq_id) if pending_rows is not None else None
            if end - max(it.start, known) != 1 or row is None:
                raise RuntimeError(f"sequence {seq.seq_id}: scheduled past its known tokens with no single pending one")
            pending_at.append(len(token_ids))
            pending_from.append(row)
            token_ids.append(0)
        lengths = np.fromiter((it.num_tokens for it in items), np.int64, len(items))
        offsets = np.zeros(len(items) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = np.fromiter((it.start for it in items), np.int64, len(items))
        item_of_token = np.repeat(np.arange(len(items)), lengths)
        positions = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
        width = max(len(it.seq.block_table) for it in items)
        # One flat C array: array() takes a chain of lists far faster than NumPy takes a nested list.
        flat = array(
            "q",
            itertools.chain.from_iterable(it.seq.block_table + [0] * (width - len(it.seq.block_table)) for it in items),
        )
        tables = np.frombuffer(flat, np.int64).reshape(len(items), width)
        sources = None
        if pending_at:
            sources = np.full(len(token_ids), -1, np.int64)
            sources[pending_at] = pending_from
        return cls(
            items=items,
            num_decodes=sum(it.num_tokens == 1 for it in items),
            block_size=block_size,
            token_ids=np.array(token_ids, np.int64),
            positions=positions,
            slots=slots_of(tables, item_of_token, positions, block_size),
            sources=sources,
            tables=tables,
            offsets=offsets,
            num_real_tokens=len(token_ids),
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def sample_index(self) -> list[int]:
        """Flat index of the last token of each item that samples this step."""
        return [int(self.offsets[i + 1]) - 1 for i, it in enumerate(self.items) if it.samples]

    @property
    def padded_from(self) -> int | None:
        """Where dummy tokens that attend to nothing start (padding after prefill chunks); None if there are none."""
        return self.num_real_tokens if self.num_tokens > max(self.num_real_tokens, self.num_decodes) else None

    def pad(self, num_tokens: int) -> None:
        """Append dummy tokens up to `num_tokens`: position 0, slot 0 of the reserved scratch block 0. In a
        decode-only step they are decode rows over that block (block table all 0, length 1), as a CUDA-graph bucket
        replays them and the paged-decode kernel reads every row; after prefill chunks they attend to nothing
        (`padded_from`). Nothing reads what they compute."""
        extra = num_tokens - self.num_tokens
        if extra <= 0:
            return
        if self.num_decodes == self.num_tokens:
            self.num_decodes = num_tokens
            self.tables = np.concatenate([self.tables, np.zeros((extra, self.tables.shape[1]), np.int64)])
        zeros = np.zeros(extra, np.int64)
        self.token_ids = np.concatenate([self.token_ids, zeros])
        self.positions = np.concatenate([self.positions, zeros])
        self.slots = np.concatenate([self.slots, zeros])
        if self.sources is not None:
            self.sources = np.concatenate([self.sources, zeros - 1])

    def context_slots(self, item: int, end: int) -> np.ndarray:
        """Slots of positions [0, end) of one item's sequence (a prefill chunk's whole context)."""
        return slots_of(self.tables, item, np.arange(end), self.block_size)

    def decode_context_slots(self) -> np.ndarray:
        """[decodes, longest context] slots of every decode's context; positions past a sequence's own length are
        clamped to its last one (attention masks them) so that the gather stays in its blocks."""
        d = self.num_decodes
        pos = self.positions[:d, None]
        ctx = np.minimum(np.arange(int(pos.max()) + 1), pos)
        return slots_of(self.tables, np.arange(d)[:, None], ctx, self.block_size)

    def to_device(self, device: torch.device, prev_tokens: torch.Tensor | None) -> DeviceInputs:
        """The step's tensors on `device` in two copies that never wait for the device (transfer.py)."""
        host = np.stack(
            [self.token_ids, self.positions, self.slots] + ([self.sources] if self.sources is not None else [])
        )
        dev = h2d(torch.from_numpy(host), torch.long, device)
        d = self.num_decodes
        dev_tables = h2d(torch.from_numpy(self.tables[:d]), torch.int32, device)
        input_ids = dev[0]
        if self.sources is not None:
            if prev_tokens is None:
                raise RuntimeError("a step has pending tokens but no previous step sampled them")
            src = dev[3]
            input_ids = torch.where(src >= 0, prev_tokens.gather(0, src.clamp(0, prev_tokens.shape[0] - 1)), input_ids)
        seq_lens = (dev[1][:d] + 1).to(torch.int32)
        return DeviceInputs(input_ids, dev[1], dev[2], dev_tables, seq_lens)
