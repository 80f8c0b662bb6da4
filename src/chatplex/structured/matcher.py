"""The engine side of constrained decoding: one llguidance matcher per output sequence.

`GrammarCompiler` is built once per tokenizer (wrapping a Hugging Face tokenizer for llguidance takes about a
second, so it happens on the first constrained request). Each sequence gets a `TokenMatcher`: `allowed()` is the
mask the sampler applies to that row before picking, `accept(token)` advances it, and `is_finished` says the
grammar is complete and allows nothing more, so the sequence ends there.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import torch

from chatplex.errors import InvalidRequestError
from chatplex.structured.tool_grammars import MARKER_LINE
from chatplex.types import Constraint

_BITS = torch.arange(8, dtype=torch.uint8)


class TokenMatcher:
    """Tracks one sequence through a grammar."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size

    def allowed(self) -> torch.Tensor:
        """A bool mask [vocab]: the tokens the grammar allows next."""
        packed = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.uint8)
        return ((packed[:, None] >> _BITS) & 1).flatten()[: self._vocab_size].bool()

    def accept(self, token: int) -> None:
        # A token outside the mask (only possible if the sampler was bypassed) leaves the matcher in its error
        # state, which is_finished reports: the sequence ends instead of producing unconstrained text.
        self._matcher.consume_token(token)

    @property
    def is_finished(self) -> bool:
        return self._matcher.is_stopped() or self._matcher.is_error()


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """The tokenizer's special tokens by text (read once per engine, for `with_special_markers`)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {tok.content: tid for tid, tok in added.items() if getattr(tok, "special", False)}


def with_special_markers(grammar: str, special: dict[str, int]) -> str:
    """Marker rules whose text is one of the special tokens (`special_token_ids`) match that token (what the model
    was trained to emit); llguidance never matches a special token against a text literal. For every engine whose
    constraints run on llguidance (in-process, or vLLM's guidance backend)."""

    def swap(m: re.Match[str]) -> str:
        tid = special.get(json.loads(m.group(2)))
        return m.group(0) if tid is None else f"{m.group(1)}: <[{tid}]>"

    return MARKER_LINE.sub(swap, grammar)


class GrammarCompiler:
    """Compiles constraints for one tokenizer; `vocab_size` is the model's (it may pad past the tokenizer's)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> None:
        from llguidance.hf import from_tokenizer

        self._tokenizer = from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_ids))
        self._vocab_size = vocab_size
        self._special = special_token_ids(tokenizer)

    def compile(self, constraint: Constraint) -> Any:
        """A ready matcher for `constraint` (copy it per sequence with `matchers`)."""
        from llguidance import LLMatcher

        matcher = LLMatcher(self._tokenizer, with_special_markers(constraint.grammar, self._special), log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(
                f"{constraint.param}: the grammar cannot be enforced: {matcher.get_error()}", param=constraint.param
            )
        return matcher

    def matchers(self, constraint: Constraint, n: int) -> list[TokenMatcher]:
        """One fresh matcher per output sequence."""
        first = self.compile(constraint)
        return [TokenMatcher(first if i == 0 else first.deep_copy(), self._vocab_size) for i in range(n)]


class Grammars:
    """An engine's constrained decoding: its GrammarCompiler is made for the first constrained request (wrapping a
    tokenizer for llguidance takes about a second), and each request gets one matcher per sequence, compiled off
    the event loop."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]) -> None:
        self._args = (tokenizer, vocab_size, sorted(eos_ids))
        self._compiler: GrammarCompiler | None = None

    async def matchers(self, constraint: Constraint | None, n: int) -> list[TokenMatcher] | None:
        """One matcher per sequence for a constrained request; None for free text."""
        if constraint is None:
            return None
        if self._compiler is None:
            self._compiler = await asyncio.to_thread(GrammarCompiler, *self._args)
        return await asyncio.to_thread(self._compiler.matchers, constraint, n)
