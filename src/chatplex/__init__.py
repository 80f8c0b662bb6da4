"""chatplex: one chat interface over several LLM inference engines."""

from chatplex.chat_model import ChatModel
from chatplex.errors import (
    ChatplexError,
    ConfigError,
    ContextLengthExceededError,
    EngineClosedError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    NotFoundError,
    UnsupportedFeatureError,
)
from chatplex.types import Delta, GenerationRequest, Response, SamplingParams, TokenLogprob, TopLogprob

__version__ = "0.1.0"

__all__ = [
    "ChatModel",
    "ChatplexError",
    "ConfigError",
    "ContextLengthExceededError",
    "Delta",
    "EngineClosedError",
    "EngineError",
    "EngineOverloadedError",
    "GenerationRequest",
    "InvalidRequestError",
    "NotFoundError",
    "Response",
    "SamplingParams",
    "TokenLogprob",
    "TopLogprob",
    "UnsupportedFeatureError",
    "__version__",
]
