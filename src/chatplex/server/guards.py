"""ASGI middleware that guards every API request before FastAPI sees it: drain, API key, body size; and an
unhandled error after it, answered as a 500 on a connection that stays usable.

It also counts in-flight requests (a streaming response counts until its last byte), which is what a SIGTERM
drain waits for. Health, metrics and the web page pass without a key so probes and browsers can reach them.
"""

from __future__ import annotations

import asyncio
import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatplex.server.errors import ServerError, error_response, route_path
from chatplex.server.routes.web import STATIC
from chatplex.server.state import ServerState

PROBE_PATHS = ("/health", "/metrics")
# The chat page and its scripts load before the page knows the API key; what they call needs it.
PUBLIC_PATHS = (*PROBE_PATHS, "/", "/favicon.ico", *(f"/web/{name}" for name in STATIC))


class RequestGuard:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in PROBE_PATHS:
            await self._answer(scope, receive, _Progress(send))
            return
        try:
            self._check(scope, path)
            receive = await self._bounded_body(scope, receive)
        except ServerError as e:
            await error_response(e, path)(scope, receive, send)
            return
        self.state.in_flight += 1
        progress = _Progress(send)
        # The request runs as its own task so that a drain that runs out of time can stop it (cancelling the
        # task closes its delta streams, which aborts it in the engine) and still end its response properly.
        request = asyncio.ensure_future(self._answer(scope, receive, progress))
        self.state.requests.add(request)
        try:
            await request
        except asyncio.CancelledError:
            if not request.cancelled() or _cancelling():  # this task itself was cancelled (uvicorn stopping)
                raise
            await progress.end(
                scope,
                receive,
                ServerError(
                    503,
                    "The server stopped (drain timeout) before this request finished.",
                    "service_unavailable",
                    code="draining",
                    headers={"Connection": "close"},
                ),
            )
        finally:
            self.state.requests.discard(request)
            self.state.in_flight -= 1

    async def _answer(self, scope: Scope, receive: Receive, progress: _Progress) -> None:
        try:
            await self.app(scope, receive, progress.send)
        except Exception as e:
            # Starlette's outermost handler would answer, then re-raise, and uvicorn closes the keep-alive
            # connection under the client (whose next pooled request gets ECONNRESET). Answering here ends the
            # exchange cleanly. A response already under way cannot be replaced: re-raise, which ends it.
            if progress.started:
                raise
            await error_response(e, route_path(scope))(scope, receive, progress.send)

    def _check(self, scope: Scope, path: str) -> None:
        if self.state.draining:
            raise ServerError(
                503,
                "The server is shutting down; no new requests.",
                "service_unavailable",
                code="draining",
                headers={"Connection": "close"},
            )
        key = self.state.settings.api_key
        if key is not None and path not in PUBLIC_PATHS:
            # Bearer (OpenAI's clients and most others) or x-api-key (Anthropic's)
            scheme, _, token = _header(scope, b"authorization").partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else _header(scope, b"x-api-key").strip()
            if not token or not hmac.compare_digest(token.encode(), key.encode()):
                raise ServerError(
                    401,
                    "Missing or invalid API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>').",
                    "authentication_error",
                    code="invalid_api_key",
                )

    async def _bounded_body(self, scope: Scope, receive: Receive) -> Receive:
        """Reject bodies over the limit: by Content-Length when given, else by reading at most the limit."""
        limit = self.state.settings.max_body_bytes
        too_large = ServerError(
            413,
            f"The request body is larger than the limit of {limit} bytes.",
            "invalid_request_error",
            code="request_too_large",
        )
        length = _header(scope, b"content-length")
        if length:
            if not length.isdigit():
                raise ServerError(400, "Content-Length is not a number.", "invalid_request_error")
            if int(length) > limit:
                raise too_large
            return receive
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return receive
        # A chunked body: buffer it (up to the limit) and replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message])
            size += len(message.get("body", b""))
            if size > limit:
                raise too_large
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)


class _Progress:
    """Where a response stands, seen from the messages sent for it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = self.finished = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def end(self, scope: Scope, receive: Receive, error: ServerError) -> None:
        """End a stopped request's exchange: the error if nothing was sent yet, else the last (empty) body chunk."""
        if not self.started:
            await error_response(error, route_path(scope))(scope, receive, self.send)
        elif not self.finished:
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""
