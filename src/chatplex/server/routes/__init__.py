"""One module per endpoint group; each exposes `router`."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel

from chatplex.server.state import ServerState

ERROR_RESPONSES = {
    400: {"description": "Invalid request"},
    401: {"description": "Missing or wrong API key"},
    404: {"description": "Unknown model"},
    429: {"description": "Too many queued requests"},
    503: {"description": "Loading or draining"},
}


def error_responses(model: type[BaseModel] | None = None) -> dict[int | str, dict[str, Any]]:
    """ERROR_RESPONSES for a route's OpenAPI entry, each with the error body `model` (OpenAI's envelope unless the
    route's API has its own shape)."""
    from chatplex.server.schemas import ErrorResponse

    return {code: {"model": model or ErrorResponse, **r} for code, r in ERROR_RESPONSES.items()}


def get_state(request: Request) -> ServerState:
    return request.app.state.server
