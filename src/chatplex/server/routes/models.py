"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from chatplex.server.errors import model_not_found
from chatplex.server.routes import get_state
from chatplex.server.schemas import ErrorResponse, ModelCard, ModelList
from chatplex.server.state import ServerState

router = APIRouter()


def _card(state: ServerState) -> ModelCard:
    max_len = state.chat_model.engine.max_model_len if state.chat_model is not None else None
    return ModelCard(id=state.model_name, max_model_len=max_len)


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: ServerState = Depends(get_state)) -> ModelList:
    return ModelList(data=[_card(state)] if state.chat_model is not None else [])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def get_model(model_id: str, state: ServerState = Depends(get_state)) -> ModelCard:
    if state.chat_model is None or model_id not in state.known_names():
        raise model_not_found(model_id)
    return _card(state)
