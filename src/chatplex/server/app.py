"""The FastAPI application factory: wires settings, guards, error handlers and routes around one ChatModel."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from chatplex import __version__
from chatplex.chat_model import ChatModel
from chatplex.server import errors
from chatplex.server.guards import RequestGuard
from chatplex.server.routes import (
    chat,
    completions,
    embeddings,
    health,
    lora,
    messages,
    models,
    ollama,
    responses,
    score,
    tokenize,
    web,
)
from chatplex.server.settings import ServerSettings
from chatplex.server.state import ServerState


def create_app(chat_model: ChatModel | None, settings: ServerSettings | None = None) -> FastAPI:
    """An app serving `chat_model`. Pass None while the model loads (health says 503), then set
    `app.state.server.chat_model` once it is ready."""
    settings = settings or ServerSettings()
    app = FastAPI(
        title="chatplex",
        version=__version__,
        root_path=settings.root_path,
        description="OpenAI-compatible API over any chatplex engine.",
    )
    state = ServerState(chat_model, settings)
    app.state.server = state
    errors.install(app)
    for module in (
        chat,
        completions,
        responses,
        messages,
        ollama,
        embeddings,
        tokenize,
        models,
        score,
        lora,
        health,
        web,
    ):
        app.include_router(module.router)
    app.add_middleware(RequestGuard, state=state)
    if settings.allowed_origins:
        # Added last so it runs first: preflight requests carry no API key and must get CORS headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version", "anthropic-beta"],
        )
    return app
