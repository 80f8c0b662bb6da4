"""Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (v0.3, Nemo, Small 3/3.1) and the newer
`[TOOL_CALLS]name[ARGS]{...}` (one marker per call; Small 3.2, Magistral). Text before the marker is content."""

from __future__ import annotations

import json
import re

from chatplex.templates.tool_parsers.base import Block, ToolParser, all_parsed, as_call

MARKER = "[TOOL_CALLS]"
_NAMED = re.compile(r"\s*([A-Za-z0-9_.\-]+)(?:\[CALL_ID\][A-Za-z0-9]*)?\[ARGS\]")


class MistralParser(ToolParser):
    name = "mistral"
    special_markers = True
    start_markers = (MARKER,)

    def read_block(self, text: str, final: bool) -> Block | None:
        body = text[len(MARKER) :]
        named = _NAMED.match(body)
        if named:
            pos = len(MARKER) + named.end()
        else:
            stripped = body.lstrip()
            if not stripped.startswith("["):
                if not final and _NAMED_SO_FAR.fullmatch(body):
                    return None  # `name[AR...` may still become the newer format
                return Block(len(MARKER), None)  # a stray marker: keep it as text
            pos = len(text) - len(stripped)
        try:
            # A JSON array or object that decodes from a prefix decodes the same from any longer text.
            value, end = json.JSONDecoder().raw_decode(text, pos)
        except json.JSONDecodeError:
            return Block(len(text), None) if final else None
        if named:
            return Block(end, [(named.group(1), value)] if isinstance(value, dict) else None)
        calls = [as_call(obj) for obj in value] if isinstance(value, list) and value else [None]
        return Block(end, all_parsed(calls))


_NAMED_SO_FAR = re.compile(r"\s*[\w.\-]*(\[[A-Z_]*(\][A-Za-z0-9]*)?)*")
