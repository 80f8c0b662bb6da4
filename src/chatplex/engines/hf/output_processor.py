"""Sampled tokens -> text and finish decisions for the Hugging Face engine's sequences: the shared per-sequence
text logic (engines/sequence_text.py) plus what only this engine has: grammar matchers, EOS suppression before
min_new_tokens, and the context-length limit of the paged cache."""

from __future__ import annotations

from typing import Any

import torch

from chatplex.engines.hf.sampler import SampleOutput
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.sequence_text import Outcome, SequenceText, token_logprob
from chatplex.types import TokenLogprob


class OutputProcessor:
    def __init__(self, tokenizer: Any, eos_ids: frozenset[int], template_stops: tuple[str, ...], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.template_stops = template_stops
        self.max_model_len = max_model_len

    def init_state(self, seq: Sequence, generator: torch.Generator | None, matcher: Any | None) -> None:
        text = SequenceText(self.tokenizer, seq.sampling, self.eos_ids, self.template_stops)
        seq.generator, seq.text, seq.matcher = generator, text, matcher

    def suppressed(self, seq: Sequence) -> tuple[int, ...]:
        """Tokens that may not be sampled yet (EOS and stop tokens before min_new_tokens)."""
        # The token about to be sampled comes after the pending ones too (async scheduling).
        if seq.num_tokens - seq.prompt_len < seq.sampling.min_new_tokens:
            return tuple(self.eos_ids | set(seq.sampling.stop_token_ids))
        return ()

    def on_token(self, seq: Sequence, token: int) -> Outcome:
        """Append a sampled token (the oldest pending one); return (new text, finish reason or None, the stop
        string/token that ended it)."""
        seq.token_ids.append(token)
        matcher = seq.matcher
        complete = False
        if matcher is not None:
            matcher.accept(token)
            complete = matcher.is_finished  # the grammar is complete: nothing more may follow
        at_limit = seq.num_output_tokens >= seq.max_new_tokens or len(seq.token_ids) >= self.max_model_len
        assert seq.text is not None  # set by init_state when the request was admitted
        return seq.text.add(token, at_limit=at_limit, complete=complete)

    def logprobs(self, token: int, row: int, result: SampleOutput) -> list[TokenLogprob]:
        return [token_logprob(self.tokenizer, token, result.logprobs[row] or 0.0, result.top_logprobs[row])]
