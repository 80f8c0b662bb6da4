"""One module per endpoint group; each exposes `router`."""

from __future__ import annotations

from fastapi import Request

from chatplex.server.state import ServerState

ERROR_RESPONSES = {
    400: {"description": "Invalid request"},
    401: {"description": "Missing or wrong API key"},
    404: {"description": "Unknown model"},
    429: {"description": "Too many queued requests"},
    503: {"description": "Loading or draining"},
}


def get_state(request: Request) -> ServerState:
    return request.app.state.server
