"""POST /v1/embeddings (OpenAI's shape) and rerank (/v1/rerank, /rerank, /v2/rerank: Cohere's / Jina's shape,
as vLLM serves them). Each is one batched library call (ChatModel.aembed / arerank)."""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Any, Literal

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field

from chatplex.server.json_body import api_router
from chatplex.server.routes import error_responses, get_state
from chatplex.server.state import ServerState

router = api_router()
_RESPONSES = error_responses()


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, description="The served model's name (optional).")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, a list of texts, token ids, or a list of token-id lists.", examples=["Hello"]
    )
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32.")
    dimensions: int | None = Field(None, description="Cut a Matryoshka model's vectors to this size.")
    user: str | None = None
    pooling: Literal["last", "mean", "cls", "max", "mean_sqrt_len"] | None = Field(
        None, description="chatplex: a causal LM pools its last token (default) or the mean of all tokens."
    )
    prompt_name: str | None = Field(None, description="chatplex: one of the embedding model's named prompts.")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class RerankDocumentIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    query: str
    documents: list[str | RerankDocumentIn]
    top_n: int | None = Field(None, description="Return the best n documents (default: all).")
    return_documents: bool = Field(True, description="Include each document's text in its result.")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: dict[str, Any] = Field(default_factory=dict, description="Cohere's: billed units and token counts.")


def _base64(vector: list[float]) -> str:
    # OpenAI's base64 encoding: the raw little-endian float32 bytes (the openai SDK decodes them with numpy).
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_RESPONSES, summary="Embed inputs")
async def create_embeddings(body: EmbeddingRequest, state: ServerState = Depends(get_state)) -> EmbeddingResponse:
    chat_model = state.model_for(body.model)
    result = await chat_model.aembed(
        body.input, pooling=body.pooling, dimensions=body.dimensions, prompt_name=body.prompt_name
    )
    encode = _base64 if body.encoding_format == "base64" else (lambda v: v)
    data = [EmbeddingData(index=i, embedding=encode(v)) for i, v in enumerate(result.vectors)]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingResponse(data=data, model=state.model_name, usage=usage)


@router.post("/v1/rerank", response_model=RerankResponse, responses=_RESPONSES, response_model_exclude_none=True)
@router.post("/rerank", response_model=RerankResponse, responses=_RESPONSES, response_model_exclude_none=True)
@router.post("/v2/rerank", response_model=RerankResponse, responses=_RESPONSES, response_model_exclude_none=True)
async def create_rerank(body: RerankRequest, state: ServerState = Depends(get_state)) -> RerankResponse:
    chat_model = state.model_for(body.model)
    documents = [d if isinstance(d, str) else d.text for d in body.documents]
    reranked = await chat_model.arerank(body.query, documents, body.top_n)
    results = [
        RerankResult(
            index=r.index,
            relevance_score=r.relevance_score,
            document=RerankDocument(text=r.text) if body.return_documents else None,
        )
        for r in reranked.results
    ]
    tokens = reranked.prompt_tokens
    meta = {"billed_units": {"search_units": 1}, "tokens": {"input_tokens": tokens, "output_tokens": 0}}
    return RerankResponse(
        id=f"rerank-{uuid.uuid4().hex}",
        model=state.model_name,
        results=results,
        usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
        meta=meta,
    )
