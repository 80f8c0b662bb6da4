"""POST /v1/messages and /v1/messages/count_tokens (Anthropic Messages API).

Every error under /v1/messages, validation and auth included, is answered in Anthropic's shape.
"""

from __future__ import annotations

import uuid

from fastapi import Depends

from chatplex.errors import UnsupportedFeatureError
from chatplex.server.anthropic import events, reply
from chatplex.server.anthropic.convert import message_kwargs, prompt_kwargs
from chatplex.server.anthropic.errors import anthropic_error
from chatplex.server.anthropic.schemas import (
    CountTokensRequest,
    CountTokensResponse,
    ErrorResponse,
    Message,
    MessagesRequest,
)
from chatplex.server.errors import register_error_shape
from chatplex.server.json_body import api_router
from chatplex.server.routes import error_responses, get_state
from chatplex.server.state import ServerState
from chatplex.server.streaming import open_all

router = api_router()
register_error_shape(events.PATH, anthropic_error)
_RESPONSES = error_responses(ErrorResponse)  # Anthropic's error shape


@router.post("/v1/messages", response_model=Message, responses=_RESPONSES)
async def create_message(body: MessagesRequest, state: ServerState = Depends(get_state)):
    state.log_request("messages", body)
    chat_model = state.model_for(body.model)
    request = chat_model.build_request(**message_kwargs(body), adapter=state.adapter_for(body.model))
    deltas = await open_all(chat_model, [request], state.metrics)
    rid = f"msg_{uuid.uuid4().hex}"
    if body.stream:
        return events.event_response(events.message_events(rid, body.model, deltas, body.stop_sequences))
    return await reply.message(rid, body.model, deltas, body.stop_sequences)


@router.post("/v1/messages/count_tokens", response_model=CountTokensResponse, responses=_RESPONSES)
async def count_tokens(body: CountTokensRequest, state: ServerState = Depends(get_state)) -> CountTokensResponse:
    state.log_request("messages.count_tokens", body)
    chat_model = state.model_for(body.model)
    request = chat_model.build_request(**prompt_kwargs(body), adapter=state.adapter_for(body.model))
    count = chat_model.engine.count_prompt_tokens(request)
    if count is None:
        raise UnsupportedFeatureError(
            f"The {chat_model.engine.backend} engine cannot count prompt tokens without generating.", param="model"
        )
    return CountTokensResponse(input_tokens=count)
