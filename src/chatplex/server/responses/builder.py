"""Deltas -> the Responses stream events, in OpenAI's order, and the final Response they describe.

One item is open at a time. A delta's reasoning, text and tool-call pieces each go to an item of their kind: when
the kind changes, the open item is closed (its `.done` events) and the next opened (`output_item.added`, then
`content_part.added` for reasoning and messages). So a reply reads: reasoning item, message, function calls.
The non-streaming reply is the same events drained, so both paths give the same Response.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from chatplex.server.responses import events as ev
from chatplex.server.responses import schemas as s
from chatplex.templates.tool_parsers import ToolCallDelta
from chatplex.types import Delta

_Item = s.OutputMessage | s.OutputFunctionCall | s.OutputReasoning


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def new_response(body: s.ResponsesRequest, model: str) -> s.ResponseObject:
    """The in-progress Response for a request: its settings echoed, no output yet."""
    text = body.text.model_copy() if body.text is not None else s.TextConfig()
    text.format = text.format or {"type": "text"}
    return s.ResponseObject(
        id=new_id("resp"),
        created_at=int(time.time()),
        model=model,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        reasoning=body.reasoning or s.ReasoningConfig(),
        store=body.store is not False,
        temperature=body.temperature,
        top_p=body.top_p,
        text=text,
        tool_choice=body.tool_choice or "auto",
        tools=body.tools or [],
        user=body.user,
        metadata=body.metadata or {},
    )


class ResponseBuilder:
    """Turns one request's deltas into events; `response` is complete once `finish` (or `fail`) has run.

    `on_finish` gets the finished Response (not a failed one), before the last event is sent."""

    def __init__(self, response: s.ResponseObject, on_finish: Callable[[s.ResponseObject], None] | None = None) -> None:
        self.response = response
        self._on_finish = on_finish
        self._seq = 0
        self._open: _Item | None = None
        self._call_index: int | None = None  # the tool-call index of the open function_call item
        self._input_tokens = self._output_tokens = self._reasoning_tokens = self._cached_tokens = 0
        self._answering = False  # text or a tool call has come: later tokens are not reasoning
        self._finish_reason: str | None = None

    def start(self) -> list[ev.StreamEvent]:
        return [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]

    def add(self, delta: Delta) -> list[ev.StreamEvent]:
        self._count(delta)
        events: list[ev.StreamEvent] = []
        if delta.reasoning:
            events += self._reasoning(delta.reasoning)
        if delta.text:
            events += self._text(delta.text)
        for piece in delta.tool_calls:
            events += self._call(piece)
        return events

    def finish(self) -> list[ev.StreamEvent]:
        """Close the open item and end the response: `response.completed`, or `response.incomplete` when the
        output was cut at max_output_tokens."""
        cut = self._finish_reason in ("length", "abort")
        events = [] if self.response.output else self._text("")  # an empty reply is still one (empty) message
        events += self._close("incomplete" if cut else "completed")
        r = self.response
        r.status, r.completed_at = ("incomplete" if cut else "completed"), int(time.time())
        if self._finish_reason == "length":
            r.incomplete_details = s.IncompleteDetails(reason="max_output_tokens")
        r.usage = s.ResponseUsage(
            input_tokens=self._input_tokens,
            input_tokens_details=s.InputTokensDetails(cached_tokens=self._cached_tokens),
            output_tokens=self._output_tokens,
            output_tokens_details=s.OutputTokensDetails(reasoning_tokens=self._reasoning_tokens),
            total_tokens=self._input_tokens + self._output_tokens,
        )
        if self._on_finish is not None:
            self._on_finish(r)
        return [*events, self._lifecycle(f"response.{r.status}")]

    def fail(self, error: dict[str, Any]) -> list[ev.StreamEvent]:
        """After an error mid-stream: `error` (OpenAI's error object), then `response.failed`."""
        code, message = error.get("code") or error.get("type") or "server_error", str(error.get("message"))
        self.response.status = "failed"
        self.response.error = s.ResponseError(code=code, message=message)
        failed = ev.ErrorEvent(code=code, message=message, param=error.get("param"))
        return [self._stamp(failed), self._lifecycle("response.failed")]

    # ---- items ------------------------------------------------------------------------------------------------

    def _count(self, delta: Delta) -> None:
        self._input_tokens, self._output_tokens = delta.prompt_tokens, delta.completion_tokens
        self._cached_tokens = delta.cached_tokens or 0
        answer = bool(delta.text or delta.tool_calls)
        # Tokens before the answer begins are thinking (the closing tag's tokens too, which carry no text). A delta
        # that a lagging stream merged from several steps (engines/relay.py) may hold the thought's end and the
        # answer's start: it counts as thinking whole.
        if not self._answering and (delta.reasoning or (self._reasoning_tokens and not answer)):
            self._reasoning_tokens += len(delta.token_ids)
        self._answering = self._answering or answer
        if delta.finish_reason is not None:
            self._finish_reason = delta.finish_reason

    @property
    def _index(self) -> int:
        """The output index of the open (last) item."""
        return len(self.response.output) - 1

    def _reasoning(self, text: str) -> list[ev.StreamEvent]:
        item = self._open if isinstance(self._open, s.OutputReasoning) else s.OutputReasoning(id=new_id("rs"))
        events = [] if item is self._open else self._begin(item)
        item.content[0].text += text
        delta = ev.TextDeltaEvent(
            type="response.reasoning_text.delta", item_id=item.id, output_index=self._index, content_index=0, delta=text
        )
        return [*events, self._stamp(delta)]

    def _text(self, text: str) -> list[ev.StreamEvent]:
        item = self._open if isinstance(self._open, s.OutputMessage) else s.OutputMessage(id=new_id("msg"))
        events = [] if item is self._open else self._begin(item)
        if not text:
            return events
        item.content[0].text += text
        delta = ev.OutputTextDeltaEvent(
            type="response.output_text.delta", item_id=item.id, output_index=self._index, content_index=0, delta=text
        )
        return [*events, self._stamp(delta)]

    def _call(self, piece: ToolCallDelta) -> list[ev.StreamEvent]:
        item = self._open if isinstance(self._open, s.OutputFunctionCall) else None
        events: list[ev.StreamEvent] = []
        if item is None or self._call_index != piece.index:
            item = s.OutputFunctionCall(id=new_id("fc"), call_id=piece.id or new_id("call"), name=piece.name or "")
            events = self._begin(item)
            self._call_index = piece.index
        item.name = item.name or piece.name or ""
        if not piece.arguments:
            return events
        item.arguments += piece.arguments
        delta = ev.ArgumentsDeltaEvent(
            type="response.function_call_arguments.delta",
            item_id=item.id,
            output_index=self._index,
            delta=piece.arguments,
        )
        return [*events, self._stamp(delta)]

    def _begin(self, item: _Item) -> list[ev.StreamEvent]:
        """Close the open item, then open `item`: `output_item.added` (and `content_part.added` with text parts)."""
        events = self._close("completed")
        self.response.output.append(item)
        self._open = item
        added = ev.ItemEvent(type="response.output_item.added", output_index=self._index, item=_copy(item))
        events.append(self._stamp(added))
        if isinstance(item, s.OutputReasoning):
            item.content = [s.ReasoningText()]
            part: s.OutputText | s.ReasoningText = item.content[0]
        elif isinstance(item, s.OutputMessage):
            item.content = [s.OutputText()]
            part = item.content[0]
        else:
            return events
        kind = "response.content_part.added"
        part_added = ev.PartEvent(
            type=kind, item_id=item.id, output_index=self._index, content_index=0, part=_copy(part)
        )
        return [*events, self._stamp(part_added)]

    def _close(self, status: s.ItemStatus) -> list[ev.StreamEvent]:
        """The open item's `.done` events, its status set."""
        item = self._open
        if item is None:
            return []
        self._open, self._call_index = None, None
        item.status = status
        i, at = item.id, self._index
        events: list[ev.StreamEvent] = []
        if isinstance(item, s.OutputFunctionCall):
            kind = "response.function_call_arguments.done"
            events.append(ev.ArgumentsDoneEvent(type=kind, item_id=i, output_index=at, arguments=item.arguments))
        else:
            part = item.content[0]
            if isinstance(item, s.OutputMessage):
                events.append(
                    ev.OutputTextDoneEvent(
                        type="response.output_text.done", item_id=i, output_index=at, content_index=0, text=part.text
                    )
                )
            else:
                events.append(
                    ev.TextDoneEvent(
                        type="response.reasoning_text.done", item_id=i, output_index=at, content_index=0, text=part.text
                    )
                )
            events.append(
                ev.PartEvent(
                    type="response.content_part.done", item_id=i, output_index=at, content_index=0, part=_copy(part)
                )
            )
        events.append(ev.ItemEvent(type="response.output_item.done", output_index=at, item=_copy(item)))
        return [self._stamp(e) for e in events]

    def _lifecycle(self, kind: str) -> ev.StreamEvent:
        return self._stamp(ev.ResponseEvent(type=kind, response=self.response.model_copy(deep=True)))

    def _stamp(self, event: ev.StreamEvent) -> ev.StreamEvent:
        event.sequence_number, self._seq = self._seq, self._seq + 1
        return event


def _copy(model: Any) -> Any:
    # Events are serialized after later deltas have grown the same item: each carries a snapshot.
    return model.model_copy(deep=True)


async def stream_events(
    builder: ResponseBuilder, deltas: AsyncGenerator[tuple[int, Delta], None]
) -> AsyncGenerator[ev.StreamEvent, None]:
    """Every event of one response, from `response.created` to `response.completed` (or `.incomplete`)."""
    for event in builder.start():
        yield event
    async with aclosing(deltas):
        async for _, delta in deltas:
            for event in builder.add(delta):
                yield event
    for event in builder.finish():
        yield event


async def final_response(builder: ResponseBuilder, deltas: AsyncGenerator[tuple[int, Delta], None]) -> s.ResponseObject:
    """The finished Response (the non-streaming reply)."""
    async with aclosing(stream_events(builder, deltas)) as events:
        async for _ in events:
            pass
    return builder.response
