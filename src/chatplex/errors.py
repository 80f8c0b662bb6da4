"""chatplex's exceptions: one root, a few branches.

    ChatplexError                      root of everything chatplex raises on purpose
    ├── ConfigError (ValueError)       a bad key or value in the model/engine arguments
    ├── InvalidRequestError (ValueError)
    │   │                              a bad message, generation argument or media item; `param` names the field
    │   ├── ContextLengthExceededError the prompt (plus max_new_tokens) does not fit the model's context
    │   └── UnsupportedFeatureError    a valid request this model or engine cannot honour
    ├── NotFoundError                  an unknown model, adapter or resource
    ├── EngineOverloadedError          the engine's waiting queue is full; retry later
    ├── EngineClosedError              the engine is shut down or shutting down
    └── EngineError                    the engine failed while serving a request (its cause is chained)

The server maps each branch to one HTTP status and OpenAI error `type` in one place.
"""

from __future__ import annotations


class ChatplexError(Exception):
    """Root of every error chatplex raises on purpose."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ConfigError(ChatplexError, ValueError):
    """A bad argument key or value; the message names the key and the valid choices."""


class InvalidRequestError(ChatplexError, ValueError):
    """A bad request: messages, generation arguments or media. `param` names the field."""


class ContextLengthExceededError(InvalidRequestError):
    """The prompt, or prompt plus max_new_tokens, does not fit the model's context window."""

    def __init__(self, message: str, *, param: str | None = "messages") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class UnsupportedFeatureError(InvalidRequestError):
    """A request this model or engine cannot honour (e.g. scoring with a generative model)."""


class NotFoundError(ChatplexError, LookupError):
    """An unknown model, adapter or resource."""


class EngineOverloadedError(ChatplexError):
    """The engine's waiting queue is full; the caller should retry after a while."""


class EngineClosedError(ChatplexError):
    """The engine is closed or draining and takes no new requests."""


class EngineError(ChatplexError):
    """The engine failed while serving a request; the original exception is chained as __cause__."""
