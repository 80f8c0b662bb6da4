"""GET /v1/models and /v1/models/{id}: the served model and the LoRA adapters a request may name."""

from __future__ import annotations

from fastapi import Depends
from pydantic import BaseModel

from chatplex.server.errors import model_not_found
from chatplex.server.json_body import api_router
from chatplex.server.routes import get_state
from chatplex.server.schemas import ErrorResponse, ModelCard
from chatplex.server.state import ServerState

router = api_router()


class ModelCardWithParent(ModelCard):
    """A model card; LoRA adapters carry `parent` (the base model's id) and `root` (their path), as vLLM's do."""

    root: str | None = None
    parent: str | None = None
    # How a request's tools reach the model (in-process engines): "template" (its chat template renders them),
    # "generic" (it does not; chatplex adds its generic tool prompt), "ignored" (it does not, generic_tool_prompt off).
    tool_prompt: str | None = None


class ModelCardList(BaseModel):
    object: str = "list"
    data: list[ModelCardWithParent]


def _cards(state: ServerState) -> list[ModelCardWithParent]:
    if state.chat_model is None:
        return []
    engine = state.chat_model.engine
    template = state.chat_model.template
    base = ModelCardWithParent(
        id=state.model_name,
        max_model_len=engine.max_model_len,
        tool_prompt=template.tools if template is not None else None,
    )
    paths = engine.adapter_paths
    adapters = [
        ModelCardWithParent(id=name, max_model_len=engine.max_model_len, root=paths.get(name), parent=state.model_name)
        for name in state.chat_model.adapters
    ]
    return [base, *adapters]


@router.get("/v1/models", response_model=ModelCardList)
async def list_models(state: ServerState = Depends(get_state)) -> ModelCardList:
    return ModelCardList(data=_cards(state))


@router.get("/v1/models/{model_id:path}", response_model=ModelCardWithParent, responses={404: {"model": ErrorResponse}})
async def get_model(model_id: str, state: ServerState = Depends(get_state)) -> ModelCardWithParent:
    cards = {card.id: card for card in _cards(state)}
    if model_id in state.known_names() and state.chat_model is not None:
        return cards[state.model_name]
    if model_id not in cards:
        raise model_not_found(model_id)
    return cards[model_id]
