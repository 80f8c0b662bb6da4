"""Ollama's API under /api/ (chat, generate, tags, show, version, ps); the work is in `chatplex.server.ollama`.

Every error under /api/ (validation, auth, 404, 429, 500) is answered in Ollama's shape, `{"error": "message"}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from fastapi.responses import StreamingResponse

from chatplex.errors import InvalidRequestError
from chatplex.server.errors import register_error_shape
from chatplex.server.json_body import api_router
from chatplex.server.ollama import catalog, replies
from chatplex.server.ollama import schemas as s
from chatplex.server.ollama.convert import chat_kwargs, check_think, generate_kwargs
from chatplex.server.ollama.names import resolve
from chatplex.server.ollama.ndjson import ndjson_response, single
from chatplex.server.ollama.options import apply_limits, ollama_field_names
from chatplex.server.ollama.route import OllamaRoute
from chatplex.server.routes import error_responses, get_state
from chatplex.server.state import ServerState
from chatplex.server.streaming import open_all

# The version of Ollama's API these routes follow (clients gate features such as `think` on it).
OLLAMA_API_VERSION = "0.12.0"


def _ollama_error(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"error": body["error"]["message"]}


register_error_shape("/api/", _ollama_error)

router = api_router()
router.route_class = OllamaRoute  # any Content-Type is JSON here, as in Ollama (`curl -d` sends form-urlencoded)
_ERRORS = error_responses(s.OllamaError)


async def _answer(
    state: ServerState,
    body: s.ChatRequest | s.GenerateRequest,
    kwargs: dict[str, Any],
    shape: replies.Shape,
    path: str,
) -> s.ChatResponse | s.GenerateResponse | StreamingResponse:
    """Start generation (errors raised before any byte is sent), then reply whole or as NDJSON."""
    clock = replies.Clock()
    chat_model, adapter = resolve(state, body.model)
    check_think(body.think, chat_model)
    with ollama_field_names():
        request = chat_model.build_request(**kwargs, adapter=adapter)
        apply_limits(request, body.options, chat_model.engine.max_model_len)
        deltas = await open_all(chat_model, [request], state.metrics)
    if body.stream:
        return ndjson_response(replies.chunks(deltas, clock, shape), path)
    return await replies.whole(deltas, clock, shape)


def _loaded(state: ServerState, body: s.ChatRequest | s.GenerateRequest, shape: replies.Shape) -> Any:
    resolve(state, body.model)  # an unknown name is still a 404
    reply = replies.loaded(shape)
    return ndjson_response(single(reply), "/api/") if body.stream else reply


@router.post("/api/chat", response_model=s.ChatResponse, response_model_exclude_none=True, responses=_ERRORS)
async def chat(body: s.ChatRequest, state: ServerState = Depends(get_state)) -> Any:
    state.log_request("ollama.chat", body)
    shape = replies.chat_shape(body.model)
    if not body.messages:
        return _loaded(state, body, shape)
    return await _answer(state, body, chat_kwargs(body), shape, "/api/chat")


@router.post("/api/generate", response_model=s.GenerateResponse, response_model_exclude_none=True, responses=_ERRORS)
async def generate(body: s.GenerateRequest, state: ServerState = Depends(get_state)) -> Any:
    state.log_request("ollama.generate", body)
    shape = replies.generate_shape(body.model)
    if not body.prompt and not body.images:
        return _loaded(state, body, shape)
    return await _answer(state, body, generate_kwargs(body), shape, "/api/generate")


@router.get("/api/tags", response_model=s.ListResponse)
async def tags(state: ServerState = Depends(get_state)) -> s.ListResponse:
    return s.ListResponse(models=catalog.listed(state))


@router.get("/api/ps", response_model=s.ProcessResponse)
async def ps(state: ServerState = Depends(get_state)) -> s.ProcessResponse:
    return s.ProcessResponse(models=catalog.running(state))


@router.post("/api/show", response_model=s.ShowResponse, responses=_ERRORS)
async def show(body: s.ShowRequest, state: ServerState = Depends(get_state)) -> s.ShowResponse:
    name = body.model or body.name
    if not name:
        raise InvalidRequestError("model: is required.", param="model")
    chat_model, _ = resolve(state, name)
    return catalog.show(chat_model)


@router.get("/api/version", response_model=s.VersionResponse)
async def version() -> s.VersionResponse:
    return s.VersionResponse(version=OLLAMA_API_VERSION)
