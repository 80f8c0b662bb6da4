"""vLLM's new token ids (and logprobs) for one sequence -> one chatplex `Delta`.

Text comes from chatplex's own streaming detokenizer and stop-string matcher, so streamed text, stop strings
and finish reasons are exactly those of the other local engines for the same tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chatplex.engines.sequence_text import SequenceText, token_logprob
from chatplex.types import Delta, FinishReason, SamplingParams, TokenLogprob


class SequenceOutput:
    """The chatplex side of one output sequence: counts tokens and turns them into text (engines/sequence_text.py)."""

    def __init__(
        self,
        index: int,
        prompt_len: int,
        sampling: SamplingParams,
        max_new_tokens: int,
        eos_ids: frozenset[int],
        text_stops: tuple[str, ...],
        tokenizer: Any,
    ) -> None:
        self.index = index
        self.prompt_len = prompt_len
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.num_tokens = 0
        self.finished = False
        self._tokenizer = tokenizer
        self._text = SequenceText(tokenizer, sampling, eos_ids, text_stops)

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return self._text.stop_ids

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
            piece, reason, stop_reason = self._text.add(token, at_limit=self.num_tokens >= self.max_new_tokens)
            text.append(piece)
            if reason is not None:
                break
        if reason is None and engine_finish is not None:
            # vLLM ended it for a reason of its own (the context is full, or it aborted the request).
            piece, reason, stop_reason = self._text.end("abort" if engine_finish == "abort" else "length")
            text.append(piece)
        self.finished = reason is not None
        lps = self._logprobs(taken, logprobs) if self.sampling.logprobs is not None else None
        return Delta(
            index=self.index,
            text="".join(text),
            token_ids=taken,
            prompt_tokens=self.prompt_len,
            completion_tokens=self.num_tokens,
            logprobs=lps,
            finish_reason=reason,
            stop_reason=stop_reason,
        )

    def _logprobs(self, tokens: list[int], logprobs: Sequence[Mapping[int, Any]] | None) -> list[TokenLogprob]:
        if logprobs is None:
            return []
        k = self.sampling.logprobs or 0
        out = []
        for token, entries in zip(tokens, logprobs):
            # vLLM gives the sampled token plus the top k (by rank, 1-based); the sampled one may rank below k.
            ranked = sorted(
                (lp.rank, t, lp.logprob) for t, lp in entries.items() if lp.rank is not None and lp.rank <= k
            )
            out.append(token_logprob(self._tokenizer, token, entries[token].logprob, [(t, lp) for _, t, lp in ranked]))
        return out
