"""Steps with prompt tokens on a CPU (a prefill chunk, alone or beside decodes) through one torch.compile'd forward
(`compile: true`, beside cpu_decode.py's decode-only step).

Why: with decode-only steps compiled, these steps took ~38% of the time of the issue-16 load (8 streams of 128-token
prompts, SmolLM2 on the 2-core CPU), run eagerly: every norm, rotary embedding and activation a separate op, every
matmul reordering its weight. Compiled with the decode step's Inductor settings (freezing packs and concatenates
the linear weights), a step of ~185 tokens went from ~100 to ~80 ms (BENCHMARKS.md section 10).

The attention stays as it is eagerly, one opaque op a layer (attention.HeldMetadata says why): the trace holds
only the layers around it, so one compile serves every step, with the token count and the number of sampled rows
as dynamic sizes (at least 2 each: a size of 1 would be compiled apart, so one sampled row is computed twice; a
step that reaches here has two tokens or more, since a one-token step, a prompt's last token too, is a decode row
that cpu_decode.py's step runs).

What it costs: a second compile at start, and a third copy of the linear weights (frozen into this step, beside
the decode step's and the plain ones that eager steps use).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from chatplex.engines.hf.attention import AttentionMetadata, HeldMetadata, PrefillSegment, holding
from chatplex.engines.hf.compile_cache import compile_step
from chatplex.engines.hf.cpu_decode import INDUCTOR_OPTIONS
from chatplex.engines.hf.kv_cache import PagedKVCache

logger = logging.getLogger(__name__)


def _prefill_forward(
    model: Any, held: HeldMetadata, input_ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    return model(
        input_ids=input_ids, position_ids=positions, use_cache=False, logits_to_keep=keep, chatplex_meta=held
    ).logits[0]


class CompiledCpuPrefill:
    def __init__(self, model: Any, cache: PagedKVCache) -> None:
        self.cache = cache
        self._model = model
        self._held = HeldMetadata(cache)
        # Nothing changes the model's modules under this step, as under cpu_decode.py's.
        self._forward = compile_step(_prefill_forward, fixed_model=True, inductor_options=INDUCTOR_OPTIONS)
        self.steps = 0  # steps run (stats, tests)

    @torch.inference_mode()
    def compile(self) -> None:
        """Compile at start, on a two-token prompt written to the scratch block 0, so no request waits for it."""
        start = time.perf_counter()
        logger.info("Compiling the CPU prefill step (torch.compile, once per start) ...")
        slots = torch.zeros(2, dtype=torch.long)
        meta = AttentionMetadata(
            cache=self.cache,
            slot_mapping=slots,
            num_decode=0,
            decode_ctx_slots=None,
            decode_positions=None,
            prefills=[PrefillSegment(q_start=0, q_len=2, start_pos=0, ctx_slots=None)],
        )
        self(torch.zeros(1, 2, dtype=torch.long), torch.arange(2)[None], torch.tensor([0, 1]), meta)
        self.steps = 0
        logger.info("CPU prefill step compiled in %.1f s", time.perf_counter() - start)

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Logits [rows of `keep`, vocab] of a step of at least two tokens: token ids and positions [1, tokens],
        `keep` the rows to project (one is run twice), `meta` the step's attention metadata."""
        assert input_ids.shape[1] >= 2  # one token is a decode step (the module docstring says why)
        rows = keep.shape[0]
        if rows == 1:
            keep = keep.repeat(2)
        torch._dynamo.mark_dynamic(input_ids, 1)
        torch._dynamo.mark_dynamic(positions, 1)
        torch._dynamo.mark_dynamic(keep, 0)
        self.steps += 1
        with holding(meta):
            return self._forward(self._model, self._held, input_ids, positions, keep)[:rows]
