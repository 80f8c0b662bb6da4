"""Server settings: what `chatplex serve` flags and environment variables configure, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
# How request fields read where OpenAI's and LLaMA-Factory's APIs differ (server.convert.llamafactory_fields).
API_MODES = ("openai", "llamafactory")


@dataclass
class ServerSettings:
    """HTTP-side settings. The model and engine settings live in the ChatModel's own arguments."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # None: the model's own name
    model_aliases: tuple[str, ...] = ()  # more names a request's `model` may use for the served model
    # A single-model server answering whatever `model` a request names (LLaMA-Factory's server ignores it; its
    # example scripts send "test"). Off: an unknown name gets OpenAI's 404.
    accept_any_model: bool = False
    api_mode: str = "openai"  # "llamafactory": its meaning of presence_penalty and of the `function` role
    log_requests: bool = False  # log each chat/completions request body at INFO (LLaMA-Factory's API_VERBOSE)
    root_path: str = ""
    api_key: str | None = None  # None: no authentication
    allowed_origins: tuple[str, ...] = ()  # CORS; empty: closed
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    # HTTP frontend processes sharing the port, all in front of one engine process (server/frontends.py).
    api_server_count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}.")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be > 0, got {self.max_body_bytes}.")
        if self.drain_timeout < 0:
            raise ValueError(f"drain_timeout must be >= 0, got {self.drain_timeout}.")
        if self.api_server_count < 1:
            raise ValueError(f"api_server_count must be >= 1, got {self.api_server_count}.")
        if self.api_mode not in API_MODES:
            raise ValueError(f"api_mode must be one of {', '.join(API_MODES)}, got {self.api_mode!r}.")
        if self.api_mode == "llamafactory":
            self.accept_any_model = True
        if self.api_key == "":
            self.api_key = None
        self.allowed_origins = tuple(o.strip() for o in self.allowed_origins if o.strip())
