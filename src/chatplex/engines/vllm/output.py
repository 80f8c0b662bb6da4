"""vLLM's new token ids (and logprobs) for one sequence -> one chatplex `Delta`.

Text comes from chatplex's own streaming detokenizer and stop-string matcher, so streamed text, stop strings
and finish reasons are exactly those of the other local engines for the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chatplex.engines.detokenizer import StreamingDetokenizer
from chatplex.engines.stop_strings import StopStringMatcher
from chatplex.types import Delta, FinishReason, SamplingParams, TokenLogprob, TopLogprob


class SequenceOutput:
    """The chatplex side of one output sequence: counts tokens, detokenizes, decides when it ends."""

    def __init__(
        self,
        index: int,
        prompt_len: int,
        sampling: SamplingParams,
        max_new_tokens: int,
        stop_token_ids: frozenset[int],
        text_stops: tuple[str, ...],
        tokenizer: Any,
    ) -> None:
        self.index = index
        self.prompt_len = prompt_len
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.stop_token_ids = stop_token_ids
        self.num_tokens = 0
        self.finished = False
        self._tokenizer = tokenizer
        self._detok = StreamingDetokenizer(tokenizer, skip_special_tokens=sampling.skip_special_tokens)
        self._stops = StopStringMatcher(sampling.stop + text_stops)

    def add(
        self, token_ids: Sequence[int], logprobs: Sequence[Mapping[int, Any]] | None, engine_finish: str | None
    ) -> Delta:
        """The delta for the new tokens of one vLLM output. Tokens after the one that ends the sequence are
        dropped; `engine_finish` is vLLM's finish reason, used when vLLM ended the sequence first."""
        text: list[str] = []
        taken: list[int] = []
        reason: FinishReason | None = None
        stop_reason: str | int | None = None
        for token in token_ids:
            taken.append(token)
            self.num_tokens += 1
            if token in self.stop_token_ids:
                reason, stop_reason = "stop", token
            else:
                segment, matched = self._stops.feed(self._detok.add_token(token))
                text.append(segment)
                if matched is not None:
                    reason, stop_reason = "stop", matched
            if reason is None and self.num_tokens >= self.max_new_tokens:
                reason = "length"
            if reason is not None:
                break
        if reason is None and engine_finish is not None:
            # vLLM ended it for a reason of its own (the context is full, or it aborted the request).
            reason = "abort" if engine_finish == "abort" else "length"
        if reason is not None and not isinstance(stop_reason, str):
            # Ended by a token or by length: flush what the detokenizer and the stop matcher held back.
            tail, matched = self._stops.feed(self._detok.finalize())
            text.append(tail if matched is not None else tail + self._stops.flush())
            if matched is not None:
                reason, stop_reason = "stop", matched
        self.finished = reason is not None
        lps = self._logprobs(taken, logprobs) if self.sampling.logprobs is not None else None
        return Delta(self.index, "".join(text), taken, self.prompt_len, self.num_tokens, lps, reason, stop_reason)

    def _logprobs(self, tokens: list[int], logprobs: Sequence[Mapping[int, Any]] | None) -> list[TokenLogprob]:
        if logprobs is None:
            return []
        k = self.sampling.logprobs or 0
        decode: Callable[[int], str] = lambda t: self._tokenizer.decode([t])  # noqa: E731
        out = []
        for token, entries in zip(tokens, logprobs):
            # vLLM gives the sampled token plus the top k (by rank, 1-based); the sampled one may rank below k.
            ranked = sorted((lp.rank, t, lp.logprob) for t, lp in entries.items() if lp.rank is not None and lp.rank <= k)
            top = tuple(TopLogprob(t, decode(t), float(lp)) for _, t, lp in ranked)
            out.append(TokenLogprob(token, decode(token), float(entries[token].logprob), top))
        return out
