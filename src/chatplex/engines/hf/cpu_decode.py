"""Decode-only steps on a CPU through one torch.compile'd step (`compile: true` on a CPU).

An eager CPU decode step of a small model is mostly not its matmuls: SmolLM2-135M on the 2-core machine spends
~8 of its ~16.5 ms a step (one sequence, bfloat16) in ~1,500 small ops (norms, rotary, residual adds, dtype
casts) and the Python that calls them. Inductor's CPU backend fuses those into a few C++ loops, and with
`freezing` packs the linear weights for oneDNN itself (and concatenates q/k/v and gate/up, as packed_linear.py
does for eager steps); `cpp_wrapper` runs the whole step from C++, without a Python line per op; attention is
traced into the step too (paged_decode.traced_decode_attention). Measured there (BENCHMARKS.md section 10, round
3): single-stream TPOT over HTTP 20.9 -> 16.3 ms. Steps that carry prompt tokens go through cpu_prefill.py's own
compiled step.

One compile serves every batch size, a lone sequence padded to two rows (decode_step.py says why), and every
context length: a step passes the block-table columns its longest context fills, a width marked dynamic. Padding
rows write to the reserved scratch block 0 and read one token of it, as in cuda_graphs.py.

What it costs: the compile, at start (45-95 s on 2 cores, cpu_prefill.py's step ~1 minute more; freezing bakes the
weights into the compiled step, so Inductor's graph cache cannot reuse it across starts, only its compiled C++
kernels), and a copy of the linear weights (the compiled step's packed ones beside the plain ones that eager steps
use; cpu_prefill.py's step holds another). So it is off by default on a CPU (`compile` unset); a server that runs
for hours is where it pays.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from chatplex.engines.hf.decode_step import SMALLEST_COMPILED_BATCH, DecodeStep, StaticDecodeInputs
from chatplex.engines.hf.kv_cache import PagedKVCache
from chatplex.engines.hf.step_inputs import DeviceInputs

logger = logging.getLogger(__name__)

INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True, "cpp.enable_concat_linear": True}


class CompiledCpuDecode:
    """The runner's DecodeReplayer (decode_step.py) on a CPU."""

    def __init__(self, model: Any, cache: PagedKVCache, max_batch: int, max_blocks: int) -> None:
        inputs = StaticDecodeInputs(
            torch.device("cpu"), max(max_batch, SMALLEST_COMPILED_BATCH), max_blocks, trim_tables=True
        )
        # Nothing changes the model's modules under this step: freezing bakes the weights in, an engine started with
        # LoRA adapters does not compile (setup.py), and one loaded at run time drops this step (lora.py).
        self.step = DecodeStep(model, cache, inputs, compile=True, inductor_options=INDUCTOR_OPTIONS, fixed_model=True)

    @property
    def max_batch(self) -> int:
        return self.step.inputs.input_ids.shape[0]

    @torch.inference_mode()
    def compile(self) -> None:
        """Compile at start (padding rows only: scratch block 0), so no request waits for it."""
        start = time.perf_counter()
        logger.info("Compiling the CPU decode step (torch.compile, once per start) ...")
        self.step(SMALLEST_COMPILED_BATCH)
        self.step(self.max_batch)  # the batch size is symbolic: no second compile
        logger.info("CPU decode step compiled in %.1f s", time.perf_counter() - start)

    def describe(self) -> str:
        return f"compiled (torch.compile, up to {self.max_batch} sequences; prompt steps compiled too)"

    def bucket(self, batch: int) -> int:
        return max(batch, SMALLEST_COMPILED_BATCH)

    def replay(self, inputs: DeviceInputs) -> torch.Tensor:
        """Run a decode-only step (padded to `bucket` rows, step_inputs.py) through the compiled step; logits
        [rows, vocab]."""
        return self.step(self.step.inputs.load(inputs))
