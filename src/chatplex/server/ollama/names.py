"""Model names as Ollama clients write them (`name:tag`; a bare `name` means `name:latest`) -> the served model."""

from __future__ import annotations

from chatplex.chat_model import ChatModel
from chatplex.server.errors import ServerError
from chatplex.server.state import ServerState

LATEST = ":latest"


def tagged(name: str) -> str:
    """`name` as Ollama lists it: with its tag, `:latest` when it has none."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + LATEST


def _spellings(requested: str) -> list[str]:
    # The served name may itself carry a tag (`--served-model-name llama3:8b`) or not; try both spellings.
    if requested.endswith(LATEST):
        return [requested, requested[: -len(LATEST)]]
    return [requested, requested + LATEST]


def not_found(requested: str) -> ServerError:
    return ServerError(404, f"model '{requested}' not found", "not_found_error", param="model", code="model_not_found")


def resolve(state: ServerState, requested: str) -> tuple[ChatModel, str | None]:
    """(the ChatModel, the LoRA adapter named or None) for a request's `model`; 404 in Ollama's words if unknown."""
    chat_model = state.model_for(None)  # 503 while the model loads
    for name in _spellings(requested):
        if name in state.known_names() or name in chat_model.adapters:
            return chat_model, state.adapter_for(name)
    if state.settings.accept_any_model:
        return chat_model, None
    raise not_found(requested)
