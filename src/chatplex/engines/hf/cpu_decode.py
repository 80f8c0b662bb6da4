"""Decode-only steps on a CPU through one torch.compile'd step (`compile: true` on a CPU).

An eager CPU decode step of a small model is mostly not its matmuls: SmolLM2-135M on the 2-core machine spends
~8 of its ~16.5 ms a step (one sequence, bfloat16) in ~1,500 small ops (norms, rotary, residual adds, dtype
casts) and the Python that calls them. Inductor's CPU backend fuses those into a few C++ loops, and with
`freezing` packs the linear weights for oneDNN itself (and concatenates q/k/v and gate/up, as packed_linear.py
does for eager steps); `cpp_wrapper` runs the whole step from C++, without a Python line per op. Measured there
(BENCHMARKS.md section 10, round 3): single-stream TPOT over HTTP 20.9 -> 16.3 ms; under load little changes,
since steps that carry a prefill chunk stay eager (and, compiled, lose packed_linear.py's packing).

One compile serves every batch size: only the batch dimension is marked dynamic. A lone sequence runs padded to
two rows (a size of 1 would be specialized into a second compile; the extra row costs little, the step reads every
weight once either way). Block tables sit in a buffer of the longest context's width, so their width never
changes either. Padding rows write to the reserved scratch block 0 and read one token of it, as in cuda_graphs.py.

What it costs: the compile, at start (45-95 s on 2 cores; freezing bakes the weights into the compiled step,
so Inductor's graph cache cannot reuse it across starts, only its compiled C++ kernels), and a second copy of the
linear weights (the compiled step's packed ones beside the plain ones that prefill steps use). So it is off by
default on a CPU (`compile` unset); a server that runs for hours is where it pays.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch

from chatplex.engines.hf.compile_cache import use_persistent_compile_cache
from chatplex.engines.hf.decode_step import StaticDecodeInputs, decode_forward
from chatplex.engines.hf.kv_cache import PagedKVCache
from chatplex.engines.hf.step_inputs import DeviceInputs

logger = logging.getLogger(__name__)

_INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True, "cpp.enable_concat_linear": True}


class CompiledCpuDecode:
    """The runner's DecodeReplayer (decode_step.py) on a CPU."""

    def __init__(self, model: Any, cache: PagedKVCache, max_batch: int, max_blocks: int) -> None:
        use_persistent_compile_cache()
        self._step = torch.compile(functools.partial(decode_forward, model, cache))
        self.inputs = StaticDecodeInputs(torch.device("cpu"), max(max_batch, 2), max_blocks)

    @property
    def max_batch(self) -> int:
        return self.inputs.input_ids.shape[0]

    def _forward(self, size: int) -> torch.Tensor:
        rows = self.inputs.rows(size)
        # Only the batch dimension varies (`dynamic=True` made the cache's sizes symbolic too, and a batch of as many
        # rows as the model has KV heads then failed a guard and compiled again).
        for tensor, dim in zip(rows, StaticDecodeInputs.BATCH_DIMS):
            torch._dynamo.mark_dynamic(tensor, dim)
        # Inductor reads these when it compiles: passed as torch.compile's `options` instead, freezing was not
        # applied (measured: the matmuls left unpacked). So they are in force around every call, a recompile's too
        # (a guard that fails on the engine thread, say); the patch is process-wide while it lasts, which no other
        # compile in the process should overlap.
        with torch._inductor.config.patch(_INDUCTOR_OPTIONS):
            return self._step(*rows)

    @torch.inference_mode()
    def compile(self) -> None:
        """Compile at start (padding rows only: scratch block 0), so no request waits for it."""
        start = time.perf_counter()
        logger.info("Compiling the CPU decode step (torch.compile, once per start) ...")
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
        size = self.inputs.load(inputs)
        return self._forward(size)
