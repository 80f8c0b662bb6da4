"""Responses stream events as server-sent events: `event: <type>` and `data: <json>` per event, no `[DONE]`.

An error after the headers went out ends the stream with an `error` event and `response.failed`, as OpenAI's does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi.responses import StreamingResponse

from chatplex.server.errors import error_payload
from chatplex.server.responses.builder import ResponseBuilder
from chatplex.server.responses.events import StreamEvent
from chatplex.server.streaming import SSE_HEADERS, framed


def frame(event: StreamEvent) -> str:
    return f"event: {event.type}\ndata: {event.model_dump_json()}\n\n"


def _failed(builder: ResponseBuilder, error: Exception) -> str:
    return "".join(frame(event) for event in builder.fail(error_payload(error, "/v1/responses")["error"]))


def event_stream_response(builder: ResponseBuilder, events: AsyncGenerator[StreamEvent, None]) -> StreamingResponse:
    """The streaming reply to POST /v1/responses."""
    frames = framed(events, frame, lambda e: _failed(builder, e))
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
