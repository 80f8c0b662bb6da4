"""The Responses stream events (openai-python's `types/responses/response_*_event.py`), each with its `type` and
`sequence_number`. Sent as `event: <type>` / `data: <json>` by `sse`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from chatplex.server.responses.schemas import OutputItem, OutputText, ReasoningText, ResponseObject


class StreamEvent(BaseModel):
    """Every event has its `type` and a `sequence_number` (0, 1, 2... in the order sent)."""

    type: str
    sequence_number: int = 0


class ResponseEvent(StreamEvent):
    """response.created / in_progress / completed / incomplete / failed."""

    response: ResponseObject


class ItemEvent(StreamEvent):
    """response.output_item.added / done."""

    output_index: int
    item: OutputItem


class PartEvent(StreamEvent):
    """response.content_part.added / done."""

    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class TextDeltaEvent(StreamEvent):
    """response.reasoning_text.delta (and the base of response.output_text.delta)."""

    item_id: str
    output_index: int
    content_index: int
    delta: str


class OutputTextDeltaEvent(TextDeltaEvent):
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(StreamEvent):
    """response.reasoning_text.done (and the base of response.output_text.done)."""

    item_id: str
    output_index: int
    content_index: int
    text: str


class OutputTextDoneEvent(TextDoneEvent):
    logprobs: list[Any] = Field(default_factory=list)


class ArgumentsDeltaEvent(StreamEvent):
    """response.function_call_arguments.delta."""

    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(StreamEvent):
    """response.function_call_arguments.done."""

    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(StreamEvent):
    """`error`: generation failed after the stream began (a `response.failed` follows)."""

    type: str = "error"
    code: str | None = None
    message: str
    param: str | None = None
