"""Tokens -> text and finish decisions for one output sequence, shared by every engine that samples in-process
(Hugging Face, llama.cpp, vLLM), so the same tokens give the same text, stop strings and finish reasons everywhere.

A sequence ends on a stop token (EOS unless `ignore_eos`, plus the request's `stop_token_ids`; never shown as
text), on a stop string (cut exactly before it, also across tokens), when its grammar is complete, or at its
length limit; text held back by the detokenizer or the stop matcher is flushed when it ends another way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chatplex.engines.detokenizer import StreamingDetokenizer
from chatplex.engines.stop_strings import StopStringMatcher
from chatplex.types import FinishReason, SamplingParams, TokenLogprob, TopLogprob

Outcome = tuple[str, FinishReason | None, str | int | None]  # (new text, finish reason, what stopped it)


def stop_tokens(eos: Any, tokenizer: Any, stop_words: Iterable[str]) -> tuple[frozenset[int], tuple[str, ...]]:
    """EOS ids (the generation config's `eos` and the tokenizer's), plus the template's stop words: as ids where
    they are single tokens, else as stop strings."""
    ids: set[int] = set(eos if isinstance(eos, (list, tuple, set, frozenset)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    text_stops = []
    for word in stop_words:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
        else:
            text_stops.append(word)
    return frozenset(ids), tuple(text_stops)


class SequenceText:
    def __init__(self, tokenizer: Any, sampling: SamplingParams, eos_ids: frozenset[int], text_stops: tuple[str, ...]):
        self.stop_ids = frozenset(sampling.stop_token_ids) | (frozenset() if sampling.ignore_eos else eos_ids)
        self._detok = StreamingDetokenizer(tokenizer, skip_special_tokens=sampling.skip_special_tokens)
        self._stops = StopStringMatcher(sampling.stop + text_stops)

    def add(self, token: int, *, at_limit: bool = False, complete: bool = False) -> Outcome:
        """Take one sampled token. `at_limit`: the sequence has reached its length limit with it; `complete`: its
        grammar accepts nothing more."""
        reason: FinishReason | None = None
        stop_reason: str | int | None = None
        text = ""
        if token in self.stop_ids:
            reason, stop_reason = "stop", token
        else:
            text, matched = self._stops.feed(self._detok.add_token(token))
            if matched is not None:
                reason, stop_reason = "stop", matched
        if reason is None and complete:
            reason = "stop"
        if reason is None and at_limit:
            reason = "length"
        if reason is not None and not isinstance(stop_reason, str):
            tail, reason, stop_reason = self.end(reason, stop_reason)
            text += tail
        return text, reason, stop_reason

    def end(self, reason: FinishReason, stop_reason: str | int | None = None) -> Outcome:
        """The sequence ends for `reason` (a token, its length, or the engine): flush the held-back text, which
        may itself still complete a stop string."""
        tail, matched = self._stops.feed(self._detok.finalize())
        if matched is not None:
            return tail, "stop", matched
        return tail + self._stops.flush(), reason, stop_reason


def token_logprob(tokenizer: Any, token: int, logprob: float, top: Iterable[tuple[int, float]]) -> TokenLogprob:
    """A sampled token's logprob with its top alternatives, token texts decoded one token at a time."""

    def decode(t: int) -> str:
        return tokenizer.decode([t])

    return TokenLogprob(
        token, decode(token), float(logprob), tuple(TopLogprob(t, decode(t), float(lp)) for t, lp in top)
    )
