"""Reward-model scores in three request shapes: chatplex's POST /v1/score, LLaMA-Factory's POST
/v1/score/evaluation and vLLM's POST /classify (and /v1/classify). All three run one batched engine call."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field

from chatplex.chat_model import ChatModel
from chatplex.errors import ChatplexError, InvalidRequestError
from chatplex.server.json_body import api_router
from chatplex.server.routes import error_responses, get_state
from chatplex.server.schemas import (
    ScoreData,
    ScoreEvaluationRequest,
    ScoreEvaluationResponse,
    ScoreResponse,
)
from chatplex.server.state import ServerState

router = api_router()
_RESPONSES = error_responses()

Conversation = list[dict[str, Any]]


class ScoreInputRequest(BaseModel):
    """chatplex's score request: one input or a batch; a conversation is rendered with the model's template."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, description="The served model's name (optional).")
    input: str | list[str] | list[Conversation] = Field(
        description="A string, a list of strings, or a list of conversations (each a list of chat messages, "
        "ending with the assistant reply to score).",
        examples=[
            ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"],
            [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]],
        ],
    )
    max_length: int | None = Field(None, description="Truncate each input to this many tokens (keeps the start).")


class ClassifyRequest(BaseModel):
    """vLLM's classification request."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[str]
    use_activation: bool | None = Field(None, description="Sigmoid over the raw score (default true, as vLLM).")
    truncate_prompt_tokens: int | None = Field(
        None, description="Keep each input's last k tokens (vLLM's meaning); -1: up to the model's context length."
    )


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ClassificationResponse(BaseModel):
    id: str
    object: str = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ClassificationData]
    usage: ClassifyUsage


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    responses=_RESPONSES,
    summary="Score inputs with a reward model",
    description="Raw scores (no sigmoid), one per input, read at each input's last token. Request: "
    "`{model?, input: str | list[str] | list[list[message]], max_length?}`; response: "
    "`{id, object: 'list', model, data: [{index, object: 'score', score}]}`.",
)
async def create_score(body: ScoreInputRequest, state: ServerState = Depends(get_state)) -> ScoreResponse:
    chat_model = state.model_for(body.model)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    async with _named_as("input"):
        scores = await chat_model.aget_scores(list(inputs), body.max_length)
    data = [ScoreData(index=i, score=score) for i, score in enumerate(scores)]
    return ScoreResponse(id=f"score-{uuid.uuid4().hex}", model=state.model_name, data=data)


@router.post("/v1/score/evaluation", response_model=ScoreEvaluationResponse, responses=_RESPONSES)
async def create_score_evaluation(
    body: ScoreEvaluationRequest, state: ServerState = Depends(get_state)
) -> ScoreEvaluationResponse:
    # LLaMA-Factory ignored `model` here and its clients send any name; keep accepting them.
    chat_model = state.model_for(None)
    async with _named_as("messages"):
        scores = await chat_model.aget_scores(body.messages, body.max_length)
    return ScoreEvaluationResponse(id=f"scoreval-{uuid.uuid4().hex}", model=state.model_name, scores=scores)


@router.post("/classify", response_model=ClassificationResponse, responses=_RESPONSES)
@router.post("/v1/classify", response_model=ClassificationResponse, responses=_RESPONSES, include_in_schema=False)
async def create_classification(
    body: ClassifyRequest, state: ServerState = Depends(get_state)
) -> ClassificationResponse:
    chat_model = state.model_for(body.model)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    keep = _truncation(body.truncate_prompt_tokens)
    async with _named_as("input"):
        scores = await chat_model.aget_scores(list(inputs), keep, truncation_side="left")
    activate = body.use_activation is not False
    label = _label(chat_model)
    data = [
        ClassificationData(index=i, label=label, probs=[_sigmoid(s) if activate else s], num_classes=1)
        for i, s in enumerate(scores)
    ]
    tokens = _count_tokens(chat_model, inputs, keep)
    return ClassificationResponse(
        id=f"classify-{uuid.uuid4().hex}",
        model=state.model_name,
        data=data,
        usage=ClassifyUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


@contextlib.asynccontextmanager
async def _named_as(field: str) -> AsyncGenerator[None, None]:
    """Errors from the Python API name its `batch_input` argument: name the request's own field instead."""
    try:
        yield
    except ChatplexError as exc:
        if exc.param == "batch_input":
            exc.message = exc.message.replace("batch_input", field, 1)
            exc.param, exc.args = field, (exc.message,)
        raise


def _truncation(value: int | None) -> int | None:
    """vLLM's truncate_prompt_tokens as a token count to keep (None: the model's context length)."""
    if value is None or value == -1:
        return None
    if value <= 0:
        raise InvalidRequestError(
            f"truncate_prompt_tokens: must be a positive number of tokens or -1, got {value}.",
            param="truncate_prompt_tokens",
        )
    return value


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _label(chat_model: ChatModel) -> str:
    return chat_model.engine.score_label


def _count_tokens(chat_model: ChatModel, inputs: list[str], limit: int | None) -> int:
    prompts = getattr(chat_model.engine, "prompts", None)
    if prompts is None:
        return 0
    return sum(min(len(prompts.tokenizer.encode(x, add_special_tokens=False)), limit or 1 << 30) for x in inputs)
