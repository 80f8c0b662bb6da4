"""LLaMA-Factory's default tool format (ReAct style): `Action: NAME` then `Action Input: {json}`, one pair per
call, several joined by newlines. Text before the first `Action:` is content; an `Action:` whose input is not a
JSON object stays text."""

from __future__ import annotations

import json
import re

from chatplex.templates.tool_parsers.base import Block, ToolParser

_HEAD = re.compile(r"Action:\s*([a-zA-Z0-9_]+)\s*Action Input:\s*(?:```(?:json)?\s*)?")
_HEAD_SO_FAR = re.compile(r"Action:\s*[a-zA-Z0-9_]*\s*(A(c(t(i(o(n( (I(n(p(u(t(:)?)?)?)?)?)?)?)?)?)?)?)?)?\s*`*")


class ReactParser(ToolParser):
    name = "react"
    start_markers = ("Action:",)

    def read_block(self, text: str, final: bool) -> Block | None:
        head = _HEAD.match(text)
        if head is None:
            if not final and _HEAD_SO_FAR.fullmatch(text):
                return None
            return Block(len("Action:"), None)
        try:
            value, end = json.JSONDecoder().raw_decode(text, head.end())
        except json.JSONDecodeError:
            return Block(len(text), None) if final else None
        if not isinstance(value, dict):
            return Block(end, None)
        fence = re.match(r"\s*```", text[end:])  # the closing fence LLaMA-Factory's extractor also strips
        if fence is None and not final and text[end:].strip() in ("", "`", "``"):
            return None  # a fence may still follow
        return Block(end + (fence.end() if fence else 0), [(head.group(1), value)])
