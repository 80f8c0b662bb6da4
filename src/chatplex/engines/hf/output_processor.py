"""Sampled tokens -> text and finish decisions, per sequence: EOS and stop tokens, incremental detokenization,
stop strings (cut exactly, also across tokens), grammar completion, length limits, logprobs."""

from __future__ import annotations

from typing import Any

import torch

from chatplex.engines.detokenizer import StreamingDetokenizer
from chatplex.engines.hf.sampler import SampleOutput
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.stop_strings import StopStringMatcher
from chatplex.types import FinishReason, SamplingParams, TokenLogprob, TopLogprob


class OutputProcessor:
    def __init__(self, tokenizer: Any, eos_ids: frozenset[int], template_stops: tuple[str, ...], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.template_stops = template_stops
        self.max_model_len = max_model_len

    def init_state(self, seq: Sequence, generator: torch.Generator | None, matcher: Any | None) -> None:
        sp = seq.sampling
        seq.state.update(
            generator=generator,
            detok=StreamingDetokenizer(self.tokenizer, skip_special_tokens=sp.skip_special_tokens),
            stops=StopStringMatcher(sp.stop + self.template_stops),
            matcher=matcher,
        )

    def suppressed(self, seq: Sequence) -> tuple[int, ...]:
        """Tokens that may not be sampled yet (EOS and stop tokens before min_new_tokens)."""
        if seq.num_output_tokens < seq.sampling.min_new_tokens:
            return tuple(self.eos_ids | set(seq.sampling.stop_token_ids))
        return ()

    def on_token(self, seq: Sequence, token: int) -> tuple[str, FinishReason | None, str | int | None]:
        """Append a sampled token; return (new text, finish reason or None, the stop string/token that ended it)."""
        seq.token_ids.append(token)
        sp: SamplingParams = seq.sampling
        detok: StreamingDetokenizer = seq.state["detok"]
        stops: StopStringMatcher = seq.state["stops"]
        reason: FinishReason | None = None
        stop_reason: str | int | None = None
        text = ""
        if token in sp.stop_token_ids or (token in self.eos_ids and not sp.ignore_eos):
            reason, stop_reason = "stop", token
        else:
            text, matched = stops.feed(detok.add_token(token))
            if matched is not None:
                reason, stop_reason = "stop", matched
        matcher = seq.state.get("matcher")
        if matcher is not None:
            matcher.accept(token)
            if reason is None and matcher.is_finished:  # the grammar is complete: nothing more may follow
                reason = "stop"
        if reason is None and (seq.num_output_tokens >= seq.max_new_tokens or seq.num_tokens >= self.max_model_len):
            reason = "length"
        if reason is not None and not isinstance(stop_reason, str):
            # Ended by a token or by length: flush what the detokenizer and the stop matcher held back.
            tail, matched = stops.feed(detok.finalize())
            text += tail if matched is not None else tail + stops.flush()
            if matched is not None:
                reason, stop_reason = "stop", matched
        return text, reason, stop_reason

    def logprobs(self, token: int, row: int, result: SampleOutput) -> list[TokenLogprob]:
        def decode(t: int) -> str:
            return self.tokenizer.decode([t])

        top = tuple(TopLogprob(t, decode(t), lp) for t, lp in result.top_logprobs[row])
        return [TokenLogprob(token, decode(token), float(result.logprobs[row] or 0.0), top)]
