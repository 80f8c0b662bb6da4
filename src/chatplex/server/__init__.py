"""chatplex's OpenAI-compatible HTTP server (HTTP only: all model work goes through `ChatModel`)."""

from chatplex.server.app import create_app
from chatplex.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
