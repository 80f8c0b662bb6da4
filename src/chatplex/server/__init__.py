"""chatplex's OpenAI-compatible HTTP server (HTTP only: all model work goes through `ChatModel`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatplex.server.app import create_app
    from chatplex.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported when asked for: `chatplex serve` reads its settings module and starts the engine process before it
    # imports FastAPI (cli/serve.py).
    if name == "create_app":
        from chatplex.server.app import create_app

        return create_app
    if name == "ServerSettings":
        from chatplex.server.settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
