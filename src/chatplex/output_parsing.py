"""Replies -> answer content, reasoning and tool calls: the one place model output is parsed.

`ChatModel` runs every chat request's deltas through `parse_deltas` when the engine renders prompts in-process
(engines behind a server, like `openai`, get parsed replies from that server). Per output sequence a
`ReplyParser` runs the template's reasoning parser first (`<think>...</think>`), then its tool parser on the
answer part, so tool calls are read from the answer only. The parsed deltas carry content in `text`, thinking in
`reasoning` and OpenAI `delta.tool_calls` pieces in `tool_calls`; streaming and non-streaming consumers both read
them, so a streamed reply reassembles to exactly the non-streamed one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from chatplex.templates import ChatTemplate
from chatplex.templates.reasoning import ReasoningParser, get_reasoning_parser
from chatplex.templates.tool_parsers import TOOL_PARSERS, ToolCallDelta, ToolParser, get_tool_parser
from chatplex.types import Delta, GenerationRequest

# A chat template that teaches no tool-call format (ChatML, the tokenizer's own...) gets Hermes' `<tool_call>`
# JSON: the format most open models are tuned on, and the one forced tool calls write for such templates.
DEFAULT_TOOL_PARSER = "hermes"


def keeps_special_tokens(parser: str | None) -> bool:
    """Whether replies read by this tool parser must keep special tokens (its markers are special tokens in the
    family's tokenizers: [TOOL_CALLS], <|tool_call|>, DeepSeek's <｜tool▁calls▁begin｜>...)."""
    return parser in TOOL_PARSERS and TOOL_PARSERS[parser].special_markers


def tool_parser_name(template: ChatTemplate | None, tools: list[dict[str, Any]] | None) -> str | None:
    """The tool-call format a reply to a request with `tools` is read in (None: no tools, or not parsed here)."""
    if template is None or not tools:
        return None
    return template.tool_parser or DEFAULT_TOOL_PARSER


class ReplyParser:
    """Splits one sequence's text, streamed in pieces, into (content, reasoning, tool-call pieces)."""

    def __init__(self, reasoning: ReasoningParser | None, tools: ToolParser | None, max_calls: int | None) -> None:
        self._reasoning = reasoning
        self._tools = tools
        self._max_calls = max_calls
        self.num_calls = 0

    def feed(self, text: str) -> tuple[str, str, list[ToolCallDelta]]:
        return self._step(text, final=False)

    def finish(self) -> tuple[str, str, list[ToolCallDelta]]:
        return self._step("", final=True)

    def _step(self, text: str, final: bool) -> tuple[str, str, list[ToolCallDelta]]:
        reasoning, answer = "", text
        if self._reasoning is not None:
            split = self._reasoning.finish() if final else self._reasoning.feed(text)
            reasoning, answer = split.reasoning, split.content
        if self._tools is None:
            return answer, reasoning, []
        events = self._tools.feed(answer) + (self._tools.finish() if final else [])
        content = "".join(e.content for e in events if e.content is not None)
        calls = [e.tool_call for e in events if e.tool_call is not None]
        if self._max_calls is not None:
            calls = [c for c in calls if c.index < self._max_calls]  # parallel_tool_calls: false keeps the first
        self.num_calls = max([self.num_calls] + [c.index + 1 for c in calls])
        return content, reasoning, calls


ParserFactory = Callable[[], ReplyParser]


def reply_parsers(
    template: ChatTemplate | None, request: GenerationRequest, prompt: Callable[[], str]
) -> ParserFactory | None:
    """A factory of per-sequence parsers for a chat request, or None when its replies need no parsing.

    `prompt` renders the request's prompt; it is called only for reasoning templates (whose reply may start
    inside a `<think>` block the prompt opened)."""
    if template is None or request.messages is None:
        return None
    tool_name = tool_parser_name(template, request.tools)
    if template.reasoning_parser is None and tool_name is None:
        return None
    prompt_text = prompt() if template.reasoning_parser else ""
    max_calls = None if request.parallel_tool_calls else 1

    def make() -> ReplyParser:
        reasoning = get_reasoning_parser(template.reasoning_parser, prompt_text) if template.reasoning_parser else None
        tools = get_tool_parser(tool_name, request.tools) if tool_name else None
        return ReplyParser(reasoning, tools, max_calls)

    return make


async def parse_deltas(deltas: AsyncGenerator[Delta, None], make_parser: ParserFactory) -> AsyncGenerator[Delta, None]:
    """Rewrite each engine delta into parsed content / reasoning / tool-call pieces; a sequence that ended on
    its own with tool calls finishes with `tool_calls`."""
    parsers: dict[int, ReplyParser] = {}
    async with aclosing(deltas):
        async for delta in deltas:
            parser = parsers.get(delta.index) or parsers.setdefault(delta.index, make_parser())
            content, reasoning, calls = parser.feed(delta.text)
            reason = delta.finish_reason
            if reason is not None:
                more = parser.finish()
                content, reasoning, calls = content + more[0], reasoning + more[1], calls + more[2]
                if reason == "stop" and parser.num_calls:
                    reason = "tool_calls"
            yield dataclasses.replace(delta, text=content, reasoning=reasoning, tool_calls=calls, finish_reason=reason)


def openai_tool_calls(pieces: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Join streamed tool-call pieces into OpenAI `message.tool_calls` entries."""
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = piece.id or call["id"]
        call["function"]["name"] = piece.name or call["function"]["name"]
        call["function"]["arguments"] += piece.arguments
    return [calls[i] for i in sorted(calls)]
