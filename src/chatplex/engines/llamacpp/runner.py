"""The one file that touches the llama.cpp context: feed token ids, read the last position's logits.

The context holds one sequence. Before each sequence the runner keeps the longest prefix the context already
holds (the KV cache of a shared system prompt, or of the prompt when a request asks for n > 1) and evaluates
only the rest. Sampling happens outside, in chatplex's own sampler, so every engine samples the same way.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch


class LlamaRunner:
    """Owns a `llama_cpp.Llama`; only the engine's worker thread calls it."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.n_vocab: int = llama.n_vocab()
        self.n_ctx: int = llama.n_ctx()

    def start(self, prompt_ids: list[int]) -> tuple[torch.Tensor, int]:
        """Make the context hold exactly `prompt_ids`; return the logits for the next token and how many prompt
        tokens were reused from the cache."""
        llama = self.llama
        cached = llama.input_ids[: llama.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, prompt_ids):
            if a != b:
                break
            keep += 1
        # At least one token must be evaluated to get fresh logits for the last position.
        keep = min(keep, len(prompt_ids) - 1)
        llama.n_tokens = keep  # eval() drops the KV cache from n_tokens on before decoding
        llama.eval(prompt_ids[keep:])
        return self._last_logits(), keep

    def step(self, token: int) -> torch.Tensor:
        """Append one token; return the logits for the next."""
        self.llama.eval([token])
        return self._last_logits()

    @property
    def n_tokens(self) -> int:
        return self.llama.n_tokens

    def _last_logits(self) -> torch.Tensor:
        ptr = self.llama._ctx.get_logits_ith(-1)
        # Copy: llama.cpp reuses the buffer on the next decode.
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
        return torch.from_numpy(logits)[None, :]

    def close(self) -> None:
        close = getattr(self.llama, "close", None)
        if close is not None:
            close()


class GrammarMask:
    """A llama.cpp grammar (GBNF) as a logits mask: tokens the grammar forbids get -inf.

    llama.cpp's grammar sampler does the matching; chatplex's sampler then picks from what is left, so
    constrained output samples exactly like unconstrained output.
    """

    def __init__(self, llama: Any, gbnf: str, root: str = "root") -> None:
        import llama_cpp

        self._lib = llama_cpp
        vocab = llama._model.vocab
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), root.encode())
        if not self._sampler:
            raise ValueError("llama.cpp could not parse the grammar.")
        n_vocab = llama.n_vocab()
        self._data = np.recarray(
            (n_vocab,), dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        )
        self._ids = np.arange(n_vocab, dtype=np.intc)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        lib = self._lib
        data = self._data
        data.id[:] = self._ids
        data.logit[:] = logits[0].numpy()
        data.p[:] = 0.0
        arr = lib.llama_token_data_array(
            data=data.ctypes.data_as(lib.llama_token_data_p), size=len(data), selected=-1, sorted=False
        )
        lib.llama_sampler_apply(self._sampler, ctypes.byref(arr))
        # The grammar sampler only sets logits to -inf; it does not reorder or resize the array.
        return torch.from_numpy(np.array(data.logit[: arr.size], dtype=np.float32))[None, :]

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None
