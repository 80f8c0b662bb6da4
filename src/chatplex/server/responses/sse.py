"""Responses stream events as server-sent events: `event: <type>` and `data: <json>` per event, no `[DONE]`.

An error after the headers went out ends the stream with an `error` event and `response.failed`, as OpenAI's does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from fastapi.responses import StreamingResponse

from chatplex.server.errors import error_payload
from chatplex.server.responses.builder import ResponseBuilder
from chatplex.server.responses.events import StreamEvent
from chatplex.server.streaming import SSE_HEADERS


def frame(event: StreamEvent) -> str:
    return f"event: {event.type}\ndata: {event.model_dump_json()}\n\n"


async def _frames(builder: ResponseBuilder, events: AsyncGenerator[StreamEvent, None]) -> AsyncGenerator[str, None]:
    async with aclosing(events):
        try:
            async for event in events:
                yield frame(event)
        except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, then end the stream properly
            for event in builder.fail(error_payload(e, "/v1/responses")["error"]):
                yield frame(event)


def event_stream_response(builder: ResponseBuilder, events: AsyncGenerator[StreamEvent, None]) -> StreamingResponse:
    """The streaming reply to POST /v1/responses."""
    return StreamingResponse(_frames(builder, events), media_type="text/event-stream", headers=SSE_HEADERS)
