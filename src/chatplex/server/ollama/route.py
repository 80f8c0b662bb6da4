"""The route class of the /api/ endpoints: a body is JSON whatever its Content-Type says, as Ollama reads it.

Ollama's own docs (and most scripts written against it) call `curl http://host/api/chat -d '{...}'`, which labels the
body `application/x-www-form-urlencoded`; Ollama parses it as JSON all the same. The OpenAI routes answer that with a
415; these relabel the body as JSON first, then run the same checks (`json_body.CheckedJSONRoute`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response

from chatplex.server.json_body import CheckedJSONRoute

_JSON = (b"content-type", b"application/json")


def _as_json(request: Request) -> Request:
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"]
    return Request({**request.scope, "headers": [*headers, _JSON]}, request.receive)


class OllamaRoute(CheckedJSONRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def any_content_type(request: Request) -> Response:
            if request.method == "POST":
                request = _as_json(request)
            return await handler(request)

        return any_content_type
