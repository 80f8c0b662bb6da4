"""POST /v1/responses (OpenAI Responses API), and GET / DELETE /v1/responses/{id} for stored responses."""

from __future__ import annotations

from fastapi import Depends, Request

from chatplex.server.json_body import api_router
from chatplex.server.responses import convert
from chatplex.server.responses import schemas as s
from chatplex.server.responses.builder import ResponseBuilder, final_response, new_response, stream_events
from chatplex.server.responses.sse import event_stream_response
from chatplex.server.responses.store import ResponseStore, StoredResponse
from chatplex.server.routes import error_responses, get_state
from chatplex.server.state import ServerState
from chatplex.server.streaming import open_all

router = api_router()
_ERRORS = error_responses()


def get_store(request: Request) -> ResponseStore:
    """The app's response store, made on first use (one per app, so servers in one process keep their own)."""
    store = getattr(request.app.state, "responses", None)
    if store is None:
        store = request.app.state.responses = ResponseStore()
    return store


@router.post("/v1/responses", response_model=s.ResponseObject, responses=_ERRORS)
async def create_response(
    body: s.ResponsesRequest, state: ServerState = Depends(get_state), store: ResponseStore = Depends(get_store)
):
    state.log_request("responses", body)
    convert.check_supported(body)
    history = store.get(body.previous_response_id, "previous_response_id").messages if body.previous_response_id else []
    conversation = history + convert.input_messages(body)
    chat_model = state.model_for(body.model)
    with convert.responses_param_names():
        kwargs = convert.request_kwargs(body, conversation)
        request = chat_model.build_request(**kwargs, adapter=state.adapter_for(body.model))
        deltas = await open_all(chat_model, [request], state.metrics)

    def keep(response: s.ResponseObject) -> None:
        if response.store:
            store.put(StoredResponse(response, conversation + convert.output_messages(response.output)))

    builder = ResponseBuilder(new_response(body, state.model_name), on_finish=keep)
    if body.stream:
        return event_stream_response(builder, stream_events(builder, deltas))
    return await final_response(builder, deltas)


@router.get("/v1/responses/{response_id}", response_model=s.ResponseObject, responses=_ERRORS)
async def retrieve_response(response_id: str, store: ResponseStore = Depends(get_store)):
    return store.get(response_id).response


@router.delete("/v1/responses/{response_id}", response_model=s.DeletedResponse, responses=_ERRORS)
async def delete_response(response_id: str, store: ResponseStore = Depends(get_store)):
    store.delete(response_id)
    return s.DeletedResponse(id=response_id)
