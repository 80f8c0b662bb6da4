"""Incremental detokenization: token ids in, text segments out.

Contract (as mlx-lm's): `add_token` returns the new text that is now certain, never half a UTF-8 character;
`finalize` returns whatever is left, so that the concatenation of all segments equals
`tokenizer.decode(all_ids)`. Decoding re-reads a short window of earlier tokens because some tokenizers
(SentencePiece) only know a token's leading space in context.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"


class StreamingDetokenizer:
    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        # A fast tokenizer's Rust backend decodes several times faster than the Python wrapper around it.
        self._backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self.token_ids: list[int] = []
        self._prefix_offset = 0  # start of the context window re-decoded with each new token
        self._read_offset = 0  # tokens before this are already emitted
        self.text = ""  # everything emitted so far

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=self._skip)
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add_token(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        prefix_text = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.token_ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""  # nothing new yet, or an incomplete UTF-8 sequence: wait for more tokens
        segment = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        self.text += segment
        return segment

    def finalize(self) -> str:
        """Flush held-back text; afterwards `self.text == tokenizer.decode(self.token_ids)`."""
        full = self._decode(self.token_ids)
        if full.startswith(self.text):
            segment = full[len(self.text) :]
        else:  # a tokenizer whose context changed earlier text: emit nothing rather than repeat text
            segment = ""
        self.text += segment
        self._prefix_offset = self._read_offset = len(self.token_ids)
        return segment
