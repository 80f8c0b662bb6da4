"""What every tool-call parser shares: the result types and one scanner that drives both parse modes.

A family parser only says where a tool-call block may start (`start_markers`, `anchored`) and how to read one
block (`read_block`). The scanner here walks the text left to right, turning it into content segments and calls.
`parse(text)` scans everything at once; `feed(delta)` scans what has arrived and holds back only what could still
change meaning (a half-written marker, an unfinished block). Because both modes run the same scanner over the
same text, the streamed events always reassemble to exactly the non-streamed result.

A call is emitted only once its block is complete and valid: an event sent to a client cannot be taken back, and
a block that turns out malformed must come back as content, never be lost.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An OpenAI-style tool call id: `call_` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def dump_arguments(arguments: Any) -> str:
    """The canonical JSON string of a call's arguments (what OpenAI's `function.arguments` carries)."""
    return json.dumps(arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as a string

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ParsedOutput:
    """A finished reply split into text and tool calls; content is None when there is no text at all."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True)
class ToolCallDelta:
    """One OpenAI `delta.tool_calls[]` entry: the first for a call has id and name, later ones add arguments."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            function["name"] = self.name
        out["function"] = function
        return out


@dataclass(frozen=True)
class DeltaEvent:
    """One streamed step: a piece of content or a piece of a tool call (never both)."""

    content: str | None = None
    tool_call: ToolCallDelta | None = None


@dataclass(frozen=True)
class Block:
    """What `read_block` found at a start marker: `end` chars were read; `calls` is None when they are malformed."""

    end: int
    calls: list[tuple[str, Any]] | None


def all_parsed(calls: Sequence[tuple[str, Any] | None]) -> list[tuple[str, Any]] | None:
    """The calls if every one of them parsed, else None (the block is malformed)."""
    parsed = [call for call in calls if call is not None]
    return parsed if len(parsed) == len(calls) else None


def assemble(events: Iterable[DeltaEvent]) -> ParsedOutput:
    """Join streamed events the way an OpenAI client does (content concatenated, arguments per index)."""
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    for ev in events:
        if ev.content is not None:
            text.append(ev.content)
        if ev.tool_call is not None:
            d = ev.tool_call
            slot = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] = d.id or slot["id"]
            slot["name"] = d.name or slot["name"]
            slot["arguments"] += d.arguments
    content = "".join(text)
    return ParsedOutput(content or None, [ToolCall(**calls[i]) for i in sorted(calls)])


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many trailing chars of `text` could be the start of a marker (and so must not be sent yet)."""
    for k in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        tail = text[-k:]
        if any(m.startswith(tail) for m in markers):
            return k
    return 0


class ToolParser:
    """Base of the family parsers. Subclasses set `start_markers` (and `anchored`) and implement `read_block`.

    `anchored` parsers (Llama JSON, pythonic lists) read a block only at the very start of the reply, after
    whitespace: there a bare `{` or `[` means a call; anywhere else it is just text.
    """

    name = "base"
    start_markers: tuple[str, ...] = ()
    end_marker = ""  # for formats whose blocks close with a marker (see `delimited`)
    # True where the family's real tokenizers make the markers special tokens: replies must then be decoded
    # with special tokens kept, or the markers this parser looks for are erased.
    special_markers = False
    anchored = False

    def __init__(self, tools: list[dict[str, Any]] | None = None, id_factory: Callable[[], str] = new_call_id) -> None:
        self.tools = tools or []  # the request's tool definitions: some formats need them to type arguments
        self._new_id = id_factory
        self._buffer = ""
        self._at_start = True
        self._calls = 0

    def read_block(self, text: str, final: bool) -> Block | None:
        """Read one block at the start of `text` (which begins with a start marker, or for anchored parsers
        with the reply). Return None when more text is needed; with `final` there is no more text to come."""
        raise NotImplementedError

    def delimited(self, text: str) -> tuple[int, str] | None:
        """For formats that close each block with `end_marker`: (end of the block, the text between the
        markers), or None while the end marker has not arrived."""
        start = self.start_markers[0]
        end = text.find(self.end_marker, len(start))
        if end < 0:
            return None
        return end + len(self.end_marker), text[len(start) : end]

    # -- one scanner for both modes -------------------------------------------------------------------------
    def _scan(self, final: bool) -> list[DeltaEvent]:
        events: list[DeltaEvent] = []
        while self._buffer:
            step = self._step(self._buffer, final)
            if step is None:
                break
            used, content, calls = step
            if content:
                events.append(DeltaEvent(content=content))
            for name, args in calls:
                index, call_id = self._calls, self._new_id()
                self._calls += 1
                events.append(DeltaEvent(tool_call=ToolCallDelta(index, "", id=call_id, name=name)))
                events.append(DeltaEvent(tool_call=ToolCallDelta(index, dump_arguments(args))))
            self._buffer = self._buffer[used:]
            self._at_start = False
        return events

    def _step(self, text: str, final: bool) -> tuple[int, str, list[tuple[str, Any]]] | None:
        """Consume a prefix of `text`: (chars used, content, calls), or None to wait for more text."""
        if self.anchored:
            if not self._at_start:
                return len(text), text, []
            stripped = text.lstrip()
            if not stripped and not final:
                return None
            if not any(stripped.startswith(m) or m.startswith(stripped) for m in self.start_markers):
                return len(text), text, []
            return self._block_step(text, final)
        starts = [i for i in (text.find(m) for m in self.start_markers) if i >= 0]
        if starts and min(starts) > 0:
            return min(starts), text[: min(starts)], []
        if starts:
            return self._block_step(text, final)
        keep = 0 if final else _held_back(text, self.start_markers)
        if keep == len(text):
            return None
        return len(text) - keep, text[: len(text) - keep], []

    def _block_step(self, text: str, final: bool) -> tuple[int, str, list[tuple[str, Any]]] | None:
        block = self.read_block(text, final)
        if block is None:
            # Unfinished at the end of the reply: keep it as text so nothing the model wrote is lost.
            return (len(text), text, []) if final else None
        if block.calls is None:
            return block.end, text[: block.end], []
        return block.end, "", block.calls

    # -- public surface -------------------------------------------------------------------------------------
    def feed(self, delta_text: str) -> list[DeltaEvent]:
        """Take the next piece of model output; return the events that are now certain."""
        self._buffer += delta_text
        return self._scan(final=False)

    def finish(self) -> list[DeltaEvent]:
        """The reply is over: flush everything still held back."""
        return self._scan(final=True)

    def parse(self, text: str) -> ParsedOutput:
        """Split a whole reply into content and tool calls (uses a fresh parser state)."""
        parser = type(self)(self.tools, self._new_id)
        return assemble(parser.feed(text) + parser.finish())


def parameter_types(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """{argument: JSON-schema type} of the tool called `name`, from the request's tool definitions."""
    for tool in tools:
        fn = tool.get("function", tool)
        if fn.get("name") == name:
            props = (fn.get("parameters") or {}).get("properties") or {}
            return {k: v.get("type") for k, v in props.items() if isinstance(v, dict)}
    return {}


def typed_value(raw: str, schema_type: Any) -> Any:
    """A value written as bare text (XML-style formats): a string where the schema says so, else JSON if it
    parses, else the text itself."""
    if schema_type == "string":
        return raw
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        return raw


def loads_object(text: str) -> Any:
    """json.loads, or None where the text is not valid JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


def as_call(obj: Any, args_keys: tuple[str, ...] = ("arguments", "parameters")) -> tuple[str, Any] | None:
    """{"name": ..., "arguments"|"parameters": {...}} -> (name, arguments), or None if it is not that shape."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args: Any = next((obj[k] for k in args_keys if k in obj), {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        args = loads_object(args)
    if not isinstance(args, dict):
        return None
    return obj["name"], args
