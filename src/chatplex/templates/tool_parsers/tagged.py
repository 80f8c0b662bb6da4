"""Calls as JSON between a start and an end tag: Hermes / Qwen 2.5 / Qwen3 `<tool_call>{...}</tool_call>` and
Phi-4-mini `<|tool_call|>{...}<|/tool_call|>`."""

from __future__ import annotations

from chatplex.templates.tool_parsers.base import Block, ToolParser, all_parsed, as_call, loads_object


class HermesParser(ToolParser):
    """`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call, text around kept."""

    name = "hermes"
    start_markers = ("<tool_call>",)
    end_marker = "</tool_call>"

    def read_block(self, text: str, final: bool) -> Block | None:
        block = self.delimited(text)
        if block is None:
            return None
        stop, inner = block
        body = loads_object(inner.strip())
        # Phi-4-mini may put several calls in one block as a list.
        objs = body if isinstance(body, list) and body else [body]
        calls = [as_call(obj) for obj in objs]
        return Block(stop, all_parsed(calls))


class Phi4MiniParser(HermesParser):
    """Phi-4-mini: `<|tool_call|>{"name": ..., "arguments": {...}}<|/tool_call|>`."""

    name = "phi4_mini"
    special_markers = True
    start_markers = ("<|tool_call|>",)
    end_marker = "<|/tool_call|>"
