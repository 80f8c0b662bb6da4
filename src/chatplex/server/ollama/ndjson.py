"""Ollama's stream framing: newline-delimited JSON, one object per line, no terminator.

Headers are sent once the first delta is in (`streaming.open_all`), so errors before it are proper HTTP statuses;
an error after it becomes one last `{"error": ...}` line, which Ollama's clients raise as a ResponseError.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from chatplex.server.errors import error_payload
from chatplex.server.streaming import SSE_HEADERS, framed

MEDIA_TYPE = "application/x-ndjson"


def line(body: BaseModel) -> str:
    return body.model_dump_json(exclude_none=True) + "\n"


def ndjson_response(bodies: AsyncGenerator[BaseModel, None], path: str) -> StreamingResponse:
    """A streamed reply; `path` picks the error shape of an in-band error line."""
    # The same no-buffering headers as SSE: proxies must pass each line on as it comes.
    lines = framed(bodies, line, lambda e: json.dumps(error_payload(e, path)) + "\n")
    return StreamingResponse(lines, media_type=MEDIA_TYPE, headers=SSE_HEADERS)


async def single(body: BaseModel) -> AsyncGenerator[BaseModel, None]:
    """A stream of one body (a streamed request that needs no generation)."""
    yield body
