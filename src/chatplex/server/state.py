"""What the server knows beyond a single request: the model (once loaded), drain status, in-flight count."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from chatplex.chat_model import ChatModel
from chatplex.errors import EngineClosedError
from chatplex.server.errors import model_not_found
from chatplex.server.metrics import Metrics
from chatplex.server.settings import ServerSettings

logger = logging.getLogger(__name__)


class ServerState:
    """Shared by every route through `app.state.server`. The model may arrive after the app starts (loading)."""

    def __init__(self, chat_model: ChatModel | None, settings: ServerSettings) -> None:
        self.chat_model = chat_model
        self.settings = settings
        self.draining = False
        self.in_flight = 0
        self.requests: set[asyncio.Task[None]] = set()  # the in-flight API requests (server.guards)
        self.metrics = Metrics(lambda: self.chat_model)

    @property
    def status(self) -> str:
        if self.draining:
            return "draining"
        if self.chat_model is None:
            return "loading"
        return "ok" if self.chat_model.engine.healthy else "engine_dead"

    @property
    def model_name(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        return self.chat_model.model_name if self.chat_model is not None else "loading"

    def known_names(self) -> set[str]:
        names = {self.model_name, *self.settings.model_aliases}
        if self.chat_model is not None:
            names.add(self.chat_model.model_name)
        return names

    def model_for(self, requested: str | None) -> ChatModel:
        """The ChatModel for a request's `model` field (None means the served one); 404 for an unknown name."""
        if self.chat_model is None:
            raise EngineClosedError("The model is still loading; retry shortly.")
        if (
            requested is not None
            and requested not in self.known_names()
            and requested not in self.chat_model.adapters
            and not self.settings.accept_any_model
        ):
            raise model_not_found(requested)
        return self.chat_model

    def log_request(self, endpoint: str, body: Any) -> None:
        """The request body at INFO, when `log_requests` (LLaMA-Factory's API_VERBOSE) asks for it."""
        if self.settings.log_requests:
            logger.info("%s request: %s", endpoint, body.model_dump_json(exclude_unset=True))

    def adapter_for(self, requested: str | None) -> str | None:
        """The LoRA adapter a request's `model` field names, or None for the base model (as vLLM selects them)."""
        if self.chat_model is None or requested is None or requested in self.known_names():
            return None
        return requested if requested in self.chat_model.adapters else None

    async def drain(self, timeout: float, poll: float = 0.05) -> bool:
        """Refuse new requests and wait (at most `timeout` s) for in-flight ones; True if all finished."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(poll)
        return self.in_flight == 0

    async def stop_in_flight(self, grace: float = 0.5) -> None:
        """Cancel every in-flight request (each is aborted in the engine and its response ended), and wait at
        most `grace` seconds for them to wind down."""
        for request in list(self.requests):
            request.cancel()
        if self.requests:
            await asyncio.wait(list(self.requests), timeout=grace)
