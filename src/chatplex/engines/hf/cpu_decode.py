"""Decode-only steps on a CPU through one torch.compile'd step (`compile: true` on a CPU).

An eager CPU decode step of a small model is mostly not its matmuls: SmolLM2-135M on the 2-core machine spends
~8 of its ~16.5 ms a step (one sequence, bfloat16) in ~1,500 small ops (norms, rotary, residual adds, dtype
casts) and the Python that calls them. Inductor's CPU backend fuses those into a few C++ loops, and with
`freezing` packs the linear weights for oneDNN itself (and concatenates q/k/v and gate/up, as packed_linear.py
does for eager steps); `cpp_wrapper` runs the whole step from C++, without a Python line per op. Measured there:
~13 ms a step at 1-2 sequences and ~16 ms at 8 (eager: ~16.5 and ~22); BENCHMARKS.md section 10.

One compile serves every batch size (`dynamic=True`). A lone sequence runs padded to two rows: a size of 1 would be
specialized into a second compile, and the extra row costs little (the step reads every weight once either way).
Block tables sit in a buffer of the longest context's width, so their width never changes either. Padding rows
write to the reserved scratch block 0 and read one token of it, as in cuda_graphs.py.

What it costs: the compile, at start (~1-2 minutes on 2 cores; freezing bakes the weights into the compiled step,
so Inductor's graph cache cannot reuse it across starts, only its compiled C++ kernels), and a second copy of the
linear weights (the compiled step's packed ones beside the plain ones that prefill steps use). So it is off by
default on a CPU (`compile` unset); a server that runs for hours is where it pays.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from chatplex.engines.hf.attention import decode_forward
from chatplex.engines.hf.compile_cache import use_persistent_compile_cache
from chatplex.engines.hf.kv_cache import PagedKVCache
from chatplex.engines.hf.step_inputs import DeviceInputs

logger = logging.getLogger(__name__)

_INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True, "cpp.enable_concat_linear": True}


class CompiledCpuDecode:
    """The runner's decode-step replayer on a CPU: same interface as cuda_graphs.DecodeGraphs."""

    def __init__(self, model: Any, cache: PagedKVCache, max_batch: int, max_blocks: int) -> None:
        use_persistent_compile_cache()

        def step(input_ids, positions, slots, tables, lens):
            return decode_forward(model, cache, input_ids, positions, slots, tables, lens)

        self._step = torch.compile(step, dynamic=True)
        n = max(max_batch, 2)
        self.input_ids = torch.zeros(1, n, dtype=torch.long)
        self.positions = torch.zeros(1, n, dtype=torch.long)
        self.slots = torch.zeros(n, dtype=torch.long)
        self.tables = torch.zeros(n, max_blocks, dtype=torch.int32)
        self.lens = torch.ones(n, dtype=torch.int32)

    @property
    def max_batch(self) -> int:
        return self.input_ids.shape[1]

    def _forward(self, size: int) -> torch.Tensor:
        return self._step(
            self.input_ids[:, :size],
            self.positions[:, :size],
            self.slots[:size],
            self.tables[:size],
            self.lens[:size],
        )

    @torch.inference_mode()
    def compile(self) -> None:
        """Compile at start (padding rows only: scratch block 0), so no request waits for it."""
        start = time.perf_counter()
        logger.info("Compiling the CPU decode step (torch.compile, once per start) ...")
        # Inductor reads these when it compiles: passed as torch.compile's `options` instead, freezing was not
        # applied (measured: the matmuls left unpacked), so they are set around the first call, which compiles.
        with torch._inductor.config.patch(_INDUCTOR_OPTIONS):
            self._forward(2)
        self._forward(self.max_batch)  # the batch size is symbolic: no second compile
        logger.info("CPU decode step compiled in %.1f s", time.perf_counter() - start)

    def describe(self) -> str:
        return f"compiled (torch.compile, up to {self.max_batch} sequences)"

    def bucket(self, batch: int) -> int:
        return max(batch, 2)

    def replay(self, inputs: DeviceInputs) -> torch.Tensor:
        """Run a decode-only step (padded to `bucket` rows, step_inputs.py) through the compiled step; logits
        [rows, vocab]."""
        size = len(inputs.input_ids)
        width = inputs.tables.shape[1]
        self.input_ids[0, :size].copy_(inputs.input_ids)
        self.positions[0, :size].copy_(inputs.positions)
        self.slots[:size].copy_(inputs.slots)
        self.lens[:size].copy_(inputs.seq_lens)
        self.tables[:size, :width].copy_(inputs.tables)
        return self._forward(size)
