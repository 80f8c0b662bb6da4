"""chatplex's errors in Anthropic's shape, for every route under /v1/messages:

    {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}

The status decides the type as Anthropic's documentation lists them; a field named by its chatplex (OpenAI)
name in a message is renamed to the field the Anthropic client sent.
"""

from __future__ import annotations

import re
from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",  # loading or draining: the client's retry logic treats it as Anthropic's 529
    529: "overloaded_error",
}
# chatplex's request field -> the Anthropic request field it came from
_RENAMES = [
    (re.compile(r"^stop\b"), "stop_sequences"),
    (re.compile(r"^response_format\b"), "output_config.format"),
    (re.compile(r"^(tools\[\d+\])\.function\.parameters"), r"\1.input_schema"),
    (re.compile(r"^(tools\[\d+\])\.function\."), r"\1."),
]


def _anthropic_names(message: str) -> str:
    for pattern, name in _RENAMES:
        message = pattern.sub(name, message, count=1)
    return message


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """`body` (OpenAI's error envelope) as Anthropic's error body (the shape `register_error_shape` takes)."""
    detail = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = str(detail.get("message", "")) if detail else ""
    return {"type": "error", "error": {"type": error_type(status), "message": _anthropic_names(message)}}
