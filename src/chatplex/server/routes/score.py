"""POST /v1/score (reward models) and LLaMA-Factory's POST /v1/score/evaluation alias."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends

from chatplex.server.routes import ERROR_RESPONSES, get_state
from chatplex.server.schemas import (
    ErrorResponse,
    ScoreData,
    ScoreEvaluationRequest,
    ScoreEvaluationResponse,
    ScoreRequest,
    ScoreResponse,
)
from chatplex.server.state import ServerState

router = APIRouter()
_RESPONSES = {code: {"model": ErrorResponse, **r} for code, r in ERROR_RESPONSES.items()}


@router.post("/v1/score", response_model=ScoreResponse, responses=_RESPONSES)
async def create_score(body: ScoreRequest, state: ServerState = Depends(get_state)) -> ScoreResponse:
    chat_model = state.model_for(body.model)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    scores = await chat_model.aget_scores(inputs, body.max_length)
    data = [ScoreData(index=i, score=score) for i, score in enumerate(scores)]
    return ScoreResponse(id=f"score-{uuid.uuid4().hex}", model=state.model_name, data=data)


@router.post("/v1/score/evaluation", response_model=ScoreEvaluationResponse, responses=_RESPONSES)
async def create_score_evaluation(
    body: ScoreEvaluationRequest, state: ServerState = Depends(get_state)
) -> ScoreEvaluationResponse:
    # LLaMA-Factory ignored `model` here and its clients send any name; keep accepting them.
    chat_model = state.model_for(None)
    scores = await chat_model.aget_scores(body.messages, body.max_length)
    return ScoreEvaluationResponse(id=f"scoreval-{uuid.uuid4().hex}", model=state.model_name, scores=scores)
