"""POST /v1/chat/completions."""

from __future__ import annotations

import uuid

from fastapi import Depends

from chatplex.server import output
from chatplex.server.convert import chat_kwargs
from chatplex.server.json_body import api_router
from chatplex.server.routes import error_responses, get_state
from chatplex.server.schemas import ChatCompletion, ChatCompletionRequest
from chatplex.server.state import ServerState
from chatplex.server.streaming import open_all, sse_response

router = api_router()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=error_responses(),
)
async def create_chat_completion(body: ChatCompletionRequest, state: ServerState = Depends(get_state)):
    state.log_request("chat.completions", body)
    chat_model = state.model_for(body.model)
    request = chat_model.build_request(
        **chat_kwargs(body, state.settings.api_mode), adapter=state.adapter_for(body.model)
    )
    deltas = await open_all(chat_model, [request], state.metrics)
    rid, n = f"chatcmpl-{uuid.uuid4().hex}", request.sampling.n
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(output.chat_chunks(rid, state.model_name, n, deltas, include_usage))
    return await output.chat_completion(rid, state.model_name, n, deltas)
