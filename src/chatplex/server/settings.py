"""Server settings: what `chatplex serve` flags and environment variables configure, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


@dataclass
class ServerSettings:
    """HTTP-side settings. The model and engine settings live in the ChatModel's own arguments."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # None: the model's own name
    root_path: str = ""
    api_key: str | None = None  # None: no authentication
    allowed_origins: tuple[str, ...] = ()  # CORS; empty: closed
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout: float = 30.0  # seconds in-flight requests get to finish after SIGTERM

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}.")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be > 0, got {self.max_body_bytes}.")
        if self.drain_timeout < 0:
            raise ValueError(f"drain_timeout must be >= 0, got {self.drain_timeout}.")
        if self.api_key == "":
            self.api_key = None
        self.allowed_origins = tuple(o.strip() for o in self.allowed_origins if o.strip())
