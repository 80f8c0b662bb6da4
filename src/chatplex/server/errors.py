"""The one place where exceptions become HTTP statuses and OpenAI's error envelope.

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Route handlers raise chatplex exceptions (or `ServerError` for HTTP-only conditions) and never build error
responses themselves. Streams that already sent headers use `error_payload` for their last SSE chunk.
The routes of another API (Anthropic's, Ollama's) register an error shape for their path prefix
(`register_error_shape`), and every error under it, auth and validation included, is answered in that shape.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatplex.errors import (
    ChatplexError,
    ConfigError,
    EngineClosedError,
    EngineOverloadedError,
    InvalidRequestError,
    NotFoundError,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1


class ServerError(Exception):
    """An HTTP-level failure with no chatplex exception behind it (auth, body size, draining...)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers


def unsupported(param: str, message: str) -> ServerError:
    """A field this server understands but cannot honour; ignoring it would silently change the result."""
    return ServerError(400, f"{param}: {message}", "invalid_request_error", param=param, code="unsupported_parameter")


def model_not_found(name: str | None) -> ServerError:
    return ServerError(
        404, f"The model {name!r} does not exist.", "not_found_error", param="model", code="model_not_found"
    )


# exception class -> (status, OpenAI error type); the first matching class wins, so subclasses come first.
_STATUS: list[tuple[type[BaseException], int, str]] = [
    (InvalidRequestError, 400, "invalid_request_error"),
    (ConfigError, 400, "invalid_request_error"),
    (NotFoundError, 404, "not_found_error"),
    (EngineOverloadedError, 429, "rate_limit_error"),
    (EngineClosedError, 503, "service_unavailable"),
]


# chatplex generation argument -> the request field an OpenAI client sent
_OPENAI_NAMES = {"num_return_sequences": "n", "max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


def _payload(message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def classify(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """(status, error body, extra headers) for any exception."""
    if isinstance(exc, ServerError):
        return exc.status, _payload(exc.message, exc.type, exc.param, exc.code), exc.headers
    if isinstance(exc, ChatplexError):
        for cls, status, kind in _STATUS:
            if isinstance(exc, cls):
                headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 429 else None
                code = exc.code or ("engine_overloaded" if status == 429 else None)
                message, param = exc.message, exc.param
                if param in _OPENAI_NAMES:  # name the field the client sent, not chatplex's internal name
                    message = message.replace(f"{param}:", f"{_OPENAI_NAMES[param]}:", 1)
                    param = _OPENAI_NAMES[param]
                return status, _payload(message, kind, param, code), headers
    logger.error("Unhandled error while serving a request", exc_info=exc)
    detail = exc.message if isinstance(exc, ChatplexError) else f"{type(exc).__name__}: {exc}"
    return 500, _payload(f"The server failed: {detail}", "server_error", None, None), None


# (path prefix, shape): OpenAI's envelope and the status -> another API's own error body.
ErrorShape = Callable[[int, dict[str, Any]], dict[str, Any]]
_SHAPES: list[tuple[str, ErrorShape]] = []


def register_error_shape(prefix: str, shape: ErrorShape) -> None:
    """Answer errors of the routes under `prefix` (e.g. "/v1/messages", "/api/") in another API's shape."""
    _SHAPES[:] = [(p, s) for p, s in _SHAPES if p != prefix] + [(prefix, shape)]


def shaped(path: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """`body` (OpenAI's envelope) in the error shape of the API that `path` belongs to."""
    for prefix, shape in _SHAPES:
        if path.startswith(prefix):
            return shape(status, body)
    return body


def error_payload(exc: BaseException, path: str = "") -> dict[str, Any]:
    """The error body for a stream whose headers are already sent."""
    status, body, _ = classify(exc)
    return shaped(path, status, body)


def error_response(exc: BaseException, path: str = "") -> JSONResponse:
    status, body, headers = classify(exc)
    return JSONResponse(shaped(path, status, body), status_code=status, headers=headers)


def route_path(scope: Any) -> str:
    """The request's path without the server's root path (as routes are declared)."""
    path: str = scope.get("path", "")
    root: Any = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


# Pydantic names the member of a union that failed in the error's location (`stop.str`, `stop.list[str]`,
# `tools[0].ChatTool`); those are types, not fields, and the client named only `stop`.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|dict|list|json-or-python|function-\w+)(\[.*\])?$|.*\[|^[A-Z]")


def _split_loc(loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """(the field as the client wrote it, the union members pydantic tried there)."""
    out, members = "", []
    for p in loc:
        if p == "body":
            continue
        if isinstance(p, str) and _UNION_MEMBER.match(p):
            members.append(p)
            continue
        out = join_path(out, p)
    return out or "body", members


def join_path(parent: str, key: str | int) -> str:
    """A field's path as clients write it: `messages[0].content`."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field, _ = _split_loc(tuple(first.get("loc", ())))
    same = [e for e in errors if _split_loc(tuple(e.get("loc", ())))[0] == field]
    tried = list(dict.fromkeys(m for e in same for m in _split_loc(tuple(e.get("loc", ())))[1][-1:]))
    if len(tried) > 1:
        got = type(first.get("input")).__name__.replace("NoneType", "null")
        message = f"{field}: expected {' or '.join(tried)}, got {got}"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')}"
    others = sorted({_split_loc(tuple(e.get("loc", ())))[0] for e in errors} - {field})
    if others:
        message += f" (also invalid: {', '.join(others[:5])})"
    body = _payload(message, "invalid_request_error", field, None)
    return JSONResponse(shaped(route_path(request.scope), 400, body), status_code=400)


def _http_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    body = shaped(route_path(request.scope), exc.status_code, _payload(str(exc.detail), kind, None, None))
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into OpenAI's error envelope."""

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, route_path(request.scope))

    # Starlette types a handler as taking any Exception; these take the class they are registered for.
    app.add_exception_handler(RequestValidationError, _validation_response)  # type: ignore[arg-type]  # see above
    app.add_exception_handler(StarletteHTTPException, _http_response)  # type: ignore[arg-type]  # see above
    app.add_exception_handler(ServerError, on_error)
    app.add_exception_handler(ChatplexError, on_error)
    # Any other exception is answered by server.guards.RequestGuard (a handler for Exception here would run in
    # Starlette's outermost middleware, which re-raises after answering and so drops the connection).
