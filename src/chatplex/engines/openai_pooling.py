"""Embeddings and rerank through an OpenAI-compatible server (the openai engine's `embed` / `rerank`).

`/embeddings` gets OpenAI's body (`input` as strings or token-id lists, `dimensions`, `encoding_format: float`);
chatplex's own `pooling` and `prompt_name` go along only when given, as extra fields vLLM and chatplex accept.
`/rerank` gets the Cohere / Jina body (vLLM and `chatplex serve` answer it); its results come back best first and
are put back into document order here. Requests go through the engine's `_send` (retries, error mapping); a 404
for the route itself (not for the model) becomes an UnsupportedFeatureError that names the server.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.errors import EngineError, NotFoundError, UnsupportedFeatureError

# The engine's `_send(method, path, body)`: a 2xx response, or the chatplex error for the server's answer.
Send = Callable[[str, str, dict[str, Any] | None], Awaitable[httpx.Response]]


async def post_json(send: Send, base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` to `path` and return the JSON object it answers."""
    try:
        response = await send("POST", path, body)
    except NotFoundError as e:
        if e.code == "model_not_found":
            raise
        raise UnsupportedFeatureError(
            f"The server at {base_url} does not serve {path} (404: {e.message}); it needs an embedding or "
            f"rerank model behind an OpenAI-compatible server that has this route (vLLM, chatplex serve).",
            param="model",
        ) from e
    try:
        payload = response.json()
    except ValueError as e:
        raise EngineError(f"The server at {base_url}{path} answered something other than JSON: {e}") from e
    if not isinstance(payload, dict):
        raise EngineError(f"The server at {base_url}{path} answered {type(payload).__name__}, not a JSON object.")
    return payload


def embeddings_body(
    model: str, inputs: list[EmbeddingInput], pooling: str | None, dimensions: int | None, prompt_name: str | None
) -> dict[str, Any]:
    """OpenAI's /embeddings body; the non-standard fields only when set."""
    body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
    optional = {"dimensions": dimensions, "pooling": pooling, "prompt_name": prompt_name}
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _vector(raw: Any) -> list[float]:
    if isinstance(raw, str):  # a server that sends base64 anyway: little-endian float32, as OpenAI's
        data = base64.b64decode(raw)
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    return [float(x) for x in raw]


def parse_embeddings(payload: dict[str, Any], count: int, url: str) -> Embeddings:
    """OpenAI's /embeddings answer -> vectors in input order (by each item's `index`)."""
    data = payload.get("data")
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else "no"
        raise EngineError(f"The server at {url} returned {got} embeddings for {count} inputs.")
    items = sorted(data, key=lambda d: int(d.get("index", 0)))
    usage = payload.get("usage") or {}
    tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
    return Embeddings([_vector(d["embedding"]) for d in items], tokens)


def rerank_body(model: str, query: str, documents: list[str]) -> dict[str, Any]:
    """The Cohere / Jina /rerank body asking for every document's score, without the texts echoed back."""
    return {"model": model, "query": query, "documents": documents, "top_n": len(documents), "return_documents": False}


def _rerank_tokens(payload: dict[str, Any]) -> int:
    usage = payload.get("usage") or {}
    meta = payload.get("meta") or {}
    tokens = usage.get("prompt_tokens") or usage.get("total_tokens") or (meta.get("tokens") or {}).get("input_tokens")
    return int(tokens or 0)


def parse_rerank(payload: dict[str, Any], count: int, url: str) -> tuple[list[float], int]:
    """A /rerank answer (best first) -> each document's score in request order, and the tokens it took."""
    scores: list[float | None] = [None] * count
    for result in payload.get("results") or []:
        index = int(result.get("index", -1))
        if 0 <= index < count:
            scores[index] = float(result["relevance_score"])
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise EngineError(f"The server at {url} returned no score for documents {missing} of {count}.")
    return [s for s in scores if s is not None], _rerank_tokens(payload)


async def remote_embed(
    send: Send,
    base_url: str,
    model: str,
    inputs: list[EmbeddingInput],
    *,
    pooling: str | None,
    dimensions: int | None,
    prompt_name: str | None,
) -> Embeddings:
    """Embeddings of `inputs` from the server's /embeddings."""
    body = embeddings_body(model, inputs, pooling, dimensions, prompt_name)
    payload = await post_json(send, base_url, "/embeddings", body)
    return parse_embeddings(payload, len(inputs), f"{base_url}/embeddings")


async def remote_rerank(
    send: Send, base_url: str, model: str, query: str, documents: list[str]
) -> tuple[list[float], int]:
    """Each document's relevance to `query` from the server's /rerank, in document order, and its token count."""
    payload = await post_json(send, base_url, "/rerank", rerank_body(model, query, documents))
    return parse_rerank(payload, len(documents), f"{base_url}/rerank")
