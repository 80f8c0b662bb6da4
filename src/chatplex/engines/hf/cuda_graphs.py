"""Decode steps replayed from CUDA graphs: one graph per batch-size bucket, captured once at start-up.

A decode-only step has the same shapes whenever its batch size is the same, so it is captured once per bucket
(1, 2, 4, 8, 16, 24, 32, 48, 64, ...) and replayed with the step's inputs copied into static buffers. Rows past
the real batch are padding: they write to the reserved scratch block 0 and read one token of it. Graphs share one
memory pool, captured largest first so smaller ones reuse its memory.

Inputs travel through two sets of pinned staging buffers used in turn, each guarded by an event, so preparing
step N+1 never waits for step N (async scheduling). A pending token (sampled by the previous step, not yet on
the host) is taken from that step's device tensor of tokens.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from typing import Any

import torch

from chatplex.engines.hf.attention import AttentionMetadata
from chatplex.engines.hf.kv_cache import PagedKVCache


def bucket_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 64, 8)) + list(range(64, 256, 32)) + list(range(256, max_batch + 64, 64))
    sizes = sorted({s for s in sizes if s < max_batch} | {max_batch})
    return sizes


class DecodeGraphs:
    def __init__(
        self, model: Any, cache: PagedKVCache, device: torch.device, max_batch: int, max_blocks: int, compile: bool = True
    ):
        self.model = model
        # torch.compile fuses the many small elementwise kernels of a decoder layer (norms, rotary, residuals):
        # at small batch, decode time is kernel count, not bandwidth. One compile serves every bucket.
        self._step = torch.compile(self._step_eager, dynamic=True) if compile else self._step_eager
        self.cache = cache
        self.device = device
        self.buckets = bucket_sizes(max_batch)
        n = self.buckets[-1]
        self.input_ids = torch.zeros(1, n, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, n, dtype=torch.long, device=device)
        self.slots = torch.zeros(n, dtype=torch.long, device=device)
        self.tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self.lens = torch.ones(n, dtype=torch.int32, device=device)
        # Pinned staging buffers, two sets used in turn: the step's inputs go over in two asynchronous copies.
        # Flat, so that the part a step uses is one contiguous region (a strided pinned copy is staged again).
        self.host = [torch.zeros(5 * n, dtype=torch.long).pin_memory() for _ in range(2)]
        self.host_tables = [torch.zeros(n * max_blocks, dtype=torch.int32).pin_memory() for _ in range(2)]
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def _step_eager(self, input_ids, positions, slots, tables, lens) -> torch.Tensor:
        meta = AttentionMetadata(
            cache=self.cache,
            slot_mapping=slots,
            num_decode=slots.shape[0],
            decode_ctx_slots=None,
            decode_positions=None,
            prefills=[],
            decode_block_tables=tables,
            decode_seq_lens=lens,
        )
        return self.model(input_ids=input_ids, position_ids=positions, use_cache=False, chatplex_meta=meta).logits[0]

    def _forward(self, size: int) -> torch.Tensor:
        return self._step(
            self.input_ids[:, :size], self.positions[:, :size], self.slots[:size], self.tables[:size], self.lens[:size]
        )

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for size in reversed(self.buckets):
                for _ in range(2):  # warm up (Triton compiles, cuBLAS picks algorithms) outside the capture
                    self._forward(size)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.logits[size] = self._forward(size)
                pool = graph.pool()
                self.graphs[size] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)

    def run(
        self,
        token_ids: list[int],
        positions: list[int],
        slots: list[int],
        tables: list[list[int]],
        sources: list[int] | None = None,
        prev_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replay the smallest graph that fits; returns logits [batch, vocab] (a view of a static buffer).

        `sources[i] >= 0`: row i's token is pending, at that row of `prev_tokens` (device)."""
        batch = len(token_ids)
        size = self.buckets[bisect.bisect_left(self.buckets, batch)]
        width = max(len(t) for t in tables)
        turn, self.turn = self.turn, 1 - self.turn
        if self.copied[turn] is not None:
            self.copied[turn].synchronize()  # this set's copies (two steps ago) are done
        host = self.host[turn][: 5 * size].view(5, size)
        host[:, batch:] = 0
        host[3, batch:] = 1
        host[4, batch:] = -1
        host[:4, :batch] = torch.tensor([token_ids, positions, slots, [p + 1 for p in positions]], dtype=torch.long)
        if sources is not None:
            host[4, :batch] = torch.tensor(sources, dtype=torch.long)
        tables_host = self.host_tables[turn][: size * width].view(size, width)
        # One flat C array (array('i') converts a list far faster than torch.tensor does a nested one).
        flat = array("i", itertools.chain.from_iterable(t + [0] * (width - len(t)) for t in tables))
        tables_host.view(-1)[: batch * width].copy_(torch.frombuffer(flat, dtype=torch.int32))
        tables_host[batch:].zero_()
        dev = host.to(self.device, non_blocking=True)
        dev_tables = tables_host.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.copied[turn] = event
        ids = dev[0]
        if sources is not None:
            assert prev_tokens is not None
            src = dev[4]
            ids = torch.where(src >= 0, prev_tokens.gather(0, src.clamp(min=0, max=prev_tokens.shape[0] - 1)), ids)
        self.input_ids[0, :size].copy_(ids)
        self.positions[0, :size].copy_(dev[1])
        self.slots[:size].copy_(dev[2])
        self.lens[:size].copy_(dev[3])
        self.tables[:size, :width].copy_(dev_tables)
        self.graphs[size].replay()
        return self.logits[size][:batch]
