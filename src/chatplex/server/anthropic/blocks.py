"""A reply's deltas -> Anthropic content-block events, and the blocks they add up to.

The streaming and non-streaming paths share `BlockWriter`, so a streamed reply is the same message as the whole
one. A block opens when the kind of output changes (thinking -> text -> each tool call) and closes before the
next one opens; a tool call's arguments stream as `input_json_delta` pieces of its JSON input.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from chatplex.server.anthropic.schemas import (
    BlockDelta,
    BlockEvent,
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJSONDelta,
    SignatureDelta,
    StopReason,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    Usage,
)
from chatplex.templates.tool_parsers import ToolCallDelta
from chatplex.types import Delta

_Block = TextBlock | ThinkingBlock | ToolUseBlock


class BlockWriter:
    """Feed one reply's deltas; get the events to stream, and at the end the message's content and stop reason."""

    def __init__(self, stop_sequences: list[str] | None) -> None:
        self._stops = stop_sequences or []
        self._blocks: list[_Block] = []
        self._arguments: dict[int, list[str]] = {}  # block index -> the JSON pieces of a tool call's input
        self._open: tuple[str, int] | None = None  # ("thinking" | "text", 0) or ("tool", the call's index)
        self.stop_reason: StopReason | None = None
        self.stop_sequence: str | None = None
        self.usage = Usage(input_tokens=0, output_tokens=0)

    def feed(self, delta: Delta) -> list[BlockEvent]:
        events: list[BlockEvent] = []
        if delta.reasoning:
            events += self._switch(("thinking", 0), ThinkingBlock(thinking=""))
            events.append(self._add(ThinkingDelta(thinking=delta.reasoning)))
        if delta.text:
            events += self._switch(("text", 0), TextBlock(text=""))
            events.append(self._add(TextDelta(text=delta.text)))
        for call in delta.tool_calls:
            events += self._switch(("tool", call.index), _tool_block(call))
            if call.arguments:
                events.append(self._add(InputJSONDelta(partial_json=call.arguments)))
        self.usage = Usage.of(delta, delta.completion_tokens)
        if delta.finish_reason is not None:
            self.stop_reason, self.stop_sequence = self._stop(delta)
        return events

    def finish(self) -> list[BlockEvent]:
        """The events that close the last open block."""
        return self._close()

    def content(self) -> list[ContentBlock]:
        """The message's blocks, each tool call's input parsed from its JSON pieces."""
        out: list[ContentBlock] = []
        for i, block in enumerate(self._blocks):
            if isinstance(block, ToolUseBlock):
                block = block.model_copy(update={"input": _tool_input("".join(self._arguments.get(i, [])))})
            out.append(block)
        return out

    def _switch(self, key: tuple[str, int], block: _Block) -> list[BlockEvent]:
        if self._open == key:
            return []
        events = self._close()
        self._blocks.append(block)
        self._open = key
        # A copy: the block itself keeps growing, and the start event carries it empty.
        return [*events, ContentBlockStartEvent(index=len(self._blocks) - 1, content_block=block.model_copy())]

    def _add(self, delta: BlockDelta) -> ContentBlockDeltaEvent:
        index, block = len(self._blocks) - 1, self._blocks[-1]
        if isinstance(delta, TextDelta) and isinstance(block, TextBlock):
            block.text += delta.text
        elif isinstance(delta, ThinkingDelta) and isinstance(block, ThinkingBlock):
            block.thinking += delta.thinking
        elif isinstance(delta, InputJSONDelta):
            self._arguments.setdefault(index, []).append(delta.partial_json)
        return ContentBlockDeltaEvent(index=index, delta=delta)

    def _close(self) -> list[BlockEvent]:
        if self._open is None:
            return []
        index, kind = len(self._blocks) - 1, self._open[0]
        self._open = None
        events: list[BlockEvent] = []
        if kind == "thinking":
            # Anthropic ends every thinking block with its signature; chatplex's is empty (nothing to verify).
            events.append(ContentBlockDeltaEvent(index=index, delta=SignatureDelta(signature="")))
        return [*events, ContentBlockStopEvent(index=index)]

    def _stop(self, delta: Delta) -> tuple[StopReason, str | None]:
        if delta.finish_reason == "length":
            return "max_tokens", None
        if delta.finish_reason == "tool_calls" or any(isinstance(b, ToolUseBlock) for b in self._blocks):
            return "tool_use", None
        if isinstance(delta.stop_reason, str) and delta.stop_reason in self._stops:
            return "stop_sequence", delta.stop_reason
        return "end_turn", None


def _tool_block(call: ToolCallDelta) -> ToolUseBlock:
    return ToolUseBlock(id=call.id or f"toolu_{uuid.uuid4().hex[:24]}", name=call.name or "")


def _tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's input object. Tool parsers emit only calls whose arguments parsed, so the fallbacks (kept
    so that nothing the model wrote is lost) are for remote engines' odd replies."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}
