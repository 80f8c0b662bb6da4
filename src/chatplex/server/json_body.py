"""The route class of every endpoint: request bodies as the JSON standard defines them, checked once before any
handler runs, and handlers cancelled when their client leaves.

Python's parser takes `NaN`, `Infinity` and `-Infinity` (not JSON) and turns `\\ud800` escapes into lone surrogates,
which no tokenizer can encode. Range checks written `value < lo or value > hi` pass NaN, so instead of trusting
each field's check, every number and string of a body is looked at here and the first bad one is a 400 naming its
path (`messages[0].content`, `temperature`).

A client that disconnects from a non-streaming request is noticed by listening for `http.disconnect` once the body
is read (nobody else reads the connection while the handler awaits the whole reply); the handler is cancelled,
which closes its delta streams and so aborts the request in the engine within a step, as a closed SSE stream
does. A streaming handler returns its response at once, and Starlette's StreamingResponse listens from then on.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from chatplex.errors import InvalidRequestError
from chatplex.sampling import valid_unicode
from chatplex.server.errors import ServerError, error_response, join_path, route_path


def check_json_values(value: Any) -> None:
    """Raise InvalidRequestError for the first non-finite number or invalid string (key or value) in `value`."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # iterative: a deeply nested body must not exhaust the recursion limit here
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            where = path or "body"
            raise InvalidRequestError(f"{where}: {item!r} is not a JSON number; send a finite number.", param=where)
        if isinstance(item, str) and not valid_unicode(item):
            where = path or "body"
            raise InvalidRequestError(
                f"{where}: the string is not valid Unicode (it holds a lone surrogate such as \\ud800).", param=where
            )
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                if not valid_unicode(key):
                    raise InvalidRequestError(
                        f"{path or 'body'}: an object key is not valid Unicode.", param=path or "body"
                    )
                stack.append((join_path(path, key), child))
        elif isinstance(item, list):
            stack.extend((join_path(path, i), child) for i, child in reversed(list(enumerate(item))))


class ParsedJSONRequest(Request):
    """A request whose JSON body was parsed (and checked) before the handler asked for it."""

    def __init__(self, request: Request, raw: bytes, parsed: Any) -> None:
        super().__init__(request.scope, request.receive)
        self._raw, self._parsed = raw, parsed

    async def body(self) -> bytes:
        return self._raw

    async def json(self) -> Any:
        return self._parsed


def _content_type(request: Request) -> str | None:
    value = request.headers.get("content-type")
    return value.split(";")[0].strip().lower() if value else None


def _is_json(kind: str | None) -> bool:
    # No Content-Type at all is taken as JSON (the router is built with strict_content_type=False to match).
    return kind is None or kind == "application/json" or kind.endswith("+json")


def _wrong_content_type(kind: str) -> ServerError:
    # `curl -d '{...}'` sends application/x-www-form-urlencoded; FastAPI would then report the whole body missing.
    return ServerError(
        415,
        f"Content-Type: {kind!r} is not accepted; send the body as JSON with Content-Type: application/json.",
        "invalid_request_error",
        param="Content-Type",
    )


class CheckedJSONRoute(APIRoute):
    """An APIRoute whose JSON body is checked by `check_json_values` first. A body that does not parse is left to
    FastAPI, which answers it with its own 400 naming the position; a body sent as another media type is a 415."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            if request.method not in ("POST", "PUT", "PATCH"):
                return await handler(request)
            body = await request.body()
            if not body:
                return await handler(request)
            kind = _content_type(request)
            path = route_path(request.scope)
            if not _is_json(kind):
                return error_response(_wrong_content_type(kind or ""), path)
            try:
                parsed = json.loads(body)
            except ValueError:  # not JSON (or not UTF-8): FastAPI's own 400 names the position
                return await handler(request)
            try:
                check_json_values(parsed)
            except InvalidRequestError as e:
                return error_response(e, path)
            return await _unless_disconnected(handler(ParsedJSONRequest(request, body, parsed)), request)

        return checked


# Never sent: the client it would answer has gone (nginx's code for that case, in logs and metrics).
CLIENT_CLOSED = 499


async def _unless_disconnected(reply: Coroutine[Any, Any, Response], request: Request) -> Response:
    """Run the handler; if the client disconnects first, cancel it."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    handler_task = asyncio.ensure_future(reply)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((handler_task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (handler_task, watcher):
            if not task.done():
                task.cancel()
        await asyncio.gather(handler_task, watcher, return_exceptions=True)
    if handler_task.cancelled():
        return Response(status_code=CLIENT_CLOSED)
    return handler_task.result()


def api_router() -> APIRouter:
    """The router every endpoint module uses."""
    return APIRouter(route_class=CheckedJSONRoute, strict_content_type=False)
