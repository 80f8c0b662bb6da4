"""Decode steps replayed from CUDA graphs: one graph per batch-size bucket, captured once at start-up.

A decode-only step has the same shapes whenever its batch size is the same, so it is captured once per bucket
(2, 4, 8, 16, 24, ..., 64, 96, 128, ...; 1 too when not compiled) and replayed with the step's inputs copied into
static buffers. Rows past the real batch are padding: they write to the reserved scratch block 0 and read one token
of it. Graphs share one memory pool, captured largest first so smaller ones reuse its memory.

A step's inputs are built and copied like an eager step's (step_inputs.py: pinned, non-blocking, pending tokens
filled in from the previous step's device tensor of tokens), then copied into the static buffers.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any

import torch

from chatplex.engines.hf.decode_step import SMALLEST_COMPILED_BATCH, DecodeStep, StaticDecodeInputs
from chatplex.engines.hf.kv_cache import PagedKVCache
from chatplex.engines.hf.step_inputs import DeviceInputs

logger = logging.getLogger(__name__)


def bucket_sizes(max_batch: int, smallest: int = 1) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 64, 8)) + list(range(64, 256, 32)) + list(range(256, max_batch + 64, 64))
    top = max(max_batch, smallest)
    return sorted({s for s in sizes if smallest <= s < top} | {top})


class DecodeGraphs:
    def __init__(
        self,
        model: Any,
        cache: PagedKVCache,
        device: torch.device,
        max_batch: int,
        max_blocks: int,
        compile: bool = True,
    ):
        # torch.compile fuses the many small elementwise kernels of a decoder layer (norms, rotary, residuals):
        # at small batch, decode time is kernel count, not bandwidth. One compile serves every bucket
        # (decode_step.py says how), the smallest then SMALLEST_COMPILED_BATCH, and every layer
        # (compiled_layers.py).
        self.buckets = bucket_sizes(max_batch, smallest=SMALLEST_COMPILED_BATCH if compile else 1)
        self.device = device
        self.step = DecodeStep(
            model, cache, StaticDecodeInputs(device, self.buckets[-1], max_blocks), compile, per_layer=True
        )
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        started = time.perf_counter()
        first = None
        with torch.cuda.stream(stream):
            for size in reversed(self.buckets):
                for _ in range(2):  # warm up (Triton compiles, cuBLAS picks algorithms) outside the capture
                    self.step(size)
                    if first is None:  # the first step compiles (or reads the compile cache): timed alone
                        torch.cuda.synchronize(self.device)
                        first = time.perf_counter()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.logits[size] = self.step(size)
                pool = graph.pool()
                self.graphs[size] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        assert first is not None
        logger.info(
            "Decode graphs: first step %.1f s%s, %d batch sizes warmed up and captured %.1f s",
            first - started,
            " (compiling, or reading the compile cache)" if self.step.compiled else "",
            len(self.buckets),
            time.perf_counter() - first,
        )

    def describe(self) -> str:
        return f"from CUDA graphs ({len(self.buckets)} batch sizes)"

    def bucket(self, batch: int) -> int:
        """The smallest captured batch size that holds `batch` rows."""
        return self.buckets[bisect.bisect_left(self.buckets, batch)]

    def replay(self, inputs: DeviceInputs) -> torch.Tensor:
        """Copy a step's inputs (padded to a bucket, step_inputs.py) into the static buffers and replay that bucket's
        graph; returns its logits [bucket, vocab] (a view of a static buffer, valid until the next replay)."""
        size = self.step.inputs.load(inputs)
        self.graphs[size].replay()
        return self.logits[size]
