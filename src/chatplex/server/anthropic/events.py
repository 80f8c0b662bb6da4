"""The streamed reply: Anthropic's event sequence, framed as server-sent events.

    message_start, (content_block_start, ping once after the first, content_block_delta..., content_block_stop)...,
    message_delta (stop_reason, usage), message_stop

Each event goes out as `event: <type>` and `data: <json>` lines, with no `[DONE]`. An error after the headers
went out is an `error` event in Anthropic's shape, which the SDK raises as an APIStatusError.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing

from fastapi.responses import StreamingResponse

from chatplex.server.anthropic.blocks import BlockWriter
from chatplex.server.anthropic.schemas import (
    Message,
    MessageDeltaBody,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageStartEvent,
    MessageStopEvent,
    PingEvent,
    StreamEvent,
    Usage,
)
from chatplex.server.errors import error_payload
from chatplex.server.streaming import SSE_HEADERS, framed
from chatplex.types import Delta

PATH = "/v1/messages"


async def message_events(
    rid: str, model: str, deltas: AsyncGenerator[tuple[int, Delta], None], stop_sequences: list[str] | None
) -> AsyncGenerator[StreamEvent, None]:
    """The events of one streamed message; `deltas` is one request's stream as `streaming.open_all` gives it."""
    writer = BlockWriter(stop_sequences)
    started = pinged = False
    async with aclosing(deltas):
        async for _, delta in deltas:
            if not started:  # the prompt's size is known from the first delta on
                started = True
                usage = Usage.of(delta, 0)
                yield MessageStartEvent(message=Message(id=rid, model=model, content=[], usage=usage))
            for event in writer.feed(delta):
                yield event
                if not pinged and event.type == "content_block_start":
                    pinged = True
                    yield PingEvent()
    for event in writer.finish():
        yield event
    if not pinged:
        yield PingEvent()
    body = MessageDeltaBody(stop_reason=writer.stop_reason or "end_turn", stop_sequence=writer.stop_sequence)
    u = writer.usage
    totals = MessageDeltaUsage(
        input_tokens=u.input_tokens, output_tokens=u.output_tokens, cache_read_input_tokens=u.cache_read_input_tokens
    )
    yield MessageDeltaEvent(delta=body, usage=totals)
    yield MessageStopEvent()


def _frame(kind: str, data: str) -> str:
    return f"event: {kind}\ndata: {data}\n\n"


def _event(event: StreamEvent) -> str:
    return _frame(event.type, event.model_dump_json())


def _error(error: Exception) -> str:
    return _frame("error", json.dumps(error_payload(error, PATH)))


def event_response(events: AsyncGenerator[StreamEvent, None]) -> StreamingResponse:
    """A `text/event-stream` response of the events."""
    return StreamingResponse(framed(events, _event, _error), media_type="text/event-stream", headers=SSE_HEADERS)
