"""Embeddings of the served GGUF model: llama.cpp's final hidden states, pooled at the last token or averaged.

llama.cpp returns hidden states only from a context created with `embedding=True`, and such a context gives no
logits, so the generation context cannot serve both. The engine opens a second, embedding-only `Llama` on the
same GGUF file at the first embed call. Weights are mmapped, so the two share the file's pages; the second costs
its own KV cache (n_ctx tokens, like the generation context's) and compute buffers: for the embedded SmolLM2-135M
at its 8,192-token context about 0.24 GB (measured RSS 0.34 GB, 0.1 GB of it weight pages both contexts share).

The context is opened with llama.cpp's pooling NONE: it returns every token's final (normed) hidden state and
chatplex pools them as the Hugging Face engine does (pool_flat). So one context serves "last" and "mean", and an
input longer than a batch runs in chunks through the KV cache; llama.cpp's own LAST / MEAN pooling needs the whole
input in one micro-batch, i.e. a compute buffer of n_ctx tokens (gigabytes of attention scores at 8k). The
vectors equal llama.cpp's own pooling (tests/engines/test_llamacpp_embeddings.py). Each input is decoded alone
from an empty cache, so a vector does not depend on what else is in the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from chatplex.engines.hf.pooling import pool_flat


class LlamaEmbedder:
    """An embedding-only llama.cpp context on a GGUF file; only the engine's worker thread calls it."""

    def __init__(self, path: str, n_ctx: int, options: dict[str, Any]) -> None:
        import llama_cpp

        self._lib = llama_cpp
        # The generation context's options (threads, GPU layers, a merged LoRA) so both see the same model.
        opts = {"n_batch": 512, **options, "embedding": True, "pooling_type": llama_cpp.LLAMA_POOLING_TYPE_NONE}
        self.llama = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, verbose=False, **opts)
        self.n_embd: int = self.llama.n_embd()

    def embed(self, ids: list[list[int]], mode: str) -> torch.Tensor:
        """[N, H] float32 pooled hidden states, one row per input (not normalised)."""
        return torch.cat([pool_flat(self._hidden_states(x), [len(x)], mode) for x in ids])

    def _hidden_states(self, ids: list[int]) -> torch.Tensor:
        """[T, H] final hidden states of one input, fed n_batch tokens at a time after the cached ones."""
        llama, ctx, batch = self.llama, self.llama._ctx, self.llama._batch
        ctx.kv_cache_clear()
        rows = []
        for start in range(0, len(ids), llama.n_batch):
            chunk = ids[start : start + llama.n_batch]
            batch.set_batch(chunk, n_past=start, logits_all=True)  # every token an output: pooling needs them all
            ctx.decode(batch)
            ptr = self._lib.llama_get_embeddings(ctx.ctx)
            # Copy: llama.cpp reuses the buffer on the next decode.
            rows.append(np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_embd)).copy())
        ctx.kv_cache_clear()
        return torch.from_numpy(np.concatenate(rows))

    def close(self) -> None:
        self.llama.close()
