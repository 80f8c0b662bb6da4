"""Embeddings and rerank scores, engine-independent: what engines return and how requests are checked.

`embedding_inputs` and `rerank_documents` take the OpenAI / Cohere request shapes as plain Python values and
raise InvalidRequestError naming the field, so the library and the server reject the same inputs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatplex.errors import InvalidRequestError

EmbeddingInput = str | list[int]  # a text, or token ids used as they are (no special tokens added)


@dataclass
class Embeddings:
    """One vector per input, in input order, and the tokens the inputs took."""

    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class RankedDocument:
    index: int  # the document's position in the request
    relevance_score: float
    text: str


@dataclass
class Reranked:
    """Documents by relevance, best first (at most top_n of them), and the tokens all query-document pairs took."""

    results: list[RankedDocument]
    prompt_tokens: int


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def embedding_inputs(value: Any) -> list[EmbeddingInput]:
    """OpenAI's `input`: a string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(value, str) or _is_token_list(value) and value:
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidRequestError(
            "input: must be a non-empty string, list of strings, list of token ids or list of token-id lists.",
            param="input",
        )
    for i, item in enumerate(value):
        if not (isinstance(item, str) or _is_token_list(item)):
            raise InvalidRequestError(
                f"input[{i}]: must be a string or a list of token ids, got {type(item).__name__}.", param="input"
            )
        if not item:
            raise InvalidRequestError(f"input[{i}]: is empty.", param="input")
        if isinstance(item, list) and min(item) < 0:
            raise InvalidRequestError(f"input[{i}]: token ids cannot be negative.", param="input")
    return value


def check_token_ids(inputs: list[EmbeddingInput], vocab_size: int | None) -> None:
    for i, item in enumerate(inputs):
        if isinstance(item, list) and vocab_size is not None and max(item) >= vocab_size:
            raise InvalidRequestError(
                f"input[{i}]: token id {max(item)} is outside the vocabulary ({vocab_size} tokens).", param="input"
            )


def rerank_documents(documents: Any) -> list[str]:
    """Cohere's / Jina's `documents`: strings or objects with a `text`."""
    if not isinstance(documents, list) or not documents:
        raise InvalidRequestError("documents: must be a non-empty list.", param="documents")
    texts = []
    for i, doc in enumerate(documents):
        text = doc.get("text") if isinstance(doc, dict) else doc
        if not isinstance(text, str):
            raise InvalidRequestError(
                f"documents[{i}]: must be a string or an object with a string 'text'.", param="documents"
            )
        texts.append(text)
    return texts


def check_top_n(top_n: Any) -> None:
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0):
        raise InvalidRequestError(f"top_n: must be a positive integer, got {top_n!r}.", param="top_n")


def ranked(scores: list[float], texts: list[str], top_n: int | None) -> list[RankedDocument]:
    """Documents sorted by score, best first; ties keep request order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [RankedDocument(i, scores[i], texts[i]) for i in order[:top_n]]
