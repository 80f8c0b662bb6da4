"""POST /v1/completions: one engine request per prompt, choices numbered prompt by prompt."""

from __future__ import annotations

import uuid

from fastapi import Depends

from chatplex.server import output
from chatplex.server.convert import completion_kwargs
from chatplex.server.json_body import api_router
from chatplex.server.routes import error_responses, get_state
from chatplex.server.schemas import Completion, CompletionRequest
from chatplex.server.state import ServerState
from chatplex.server.streaming import open_all, sse_response

router = api_router()


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses=error_responses(),
)
async def create_completion(body: CompletionRequest, state: ServerState = Depends(get_state)):
    state.log_request("completions", body)
    chat_model = state.model_for(body.model)
    # Build (validate) every request before starting any, so one bad prompt wastes no generation.
    adapter = state.adapter_for(body.model)
    requests = [
        chat_model.build_request(**kw, adapter=adapter) for kw in completion_kwargs(body, state.settings.api_mode)
    ]
    deltas = await open_all(chat_model, requests, state.metrics)
    rid, n = f"cmpl-{uuid.uuid4().hex}", requests[0].sampling.n
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(output.completion_chunks(rid, state.model_name, n, deltas, include_usage))
    return await output.completion(rid, state.model_name, n, deltas)
