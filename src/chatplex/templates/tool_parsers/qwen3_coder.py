"""Qwen3-Coder XML calls: `<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n</function>\\n
</tool_call>`. Values are bare text; the tool's schema says which are strings (others are read as JSON)."""

from __future__ import annotations

import re

from chatplex.templates.tool_parsers.base import Block, ToolParser, parameter_types, typed_value

_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>\s*", re.DOTALL)
_PARAM = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)


class Qwen3CoderParser(ToolParser):
    name = "qwen3_coder"
    start_markers = ("<tool_call>",)
    end_marker = "</tool_call>"

    def read_block(self, text: str, final: bool) -> Block | None:
        block = self.delimited(text)
        if block is None:
            return None
        stop, inner = block
        match = _FUNCTION.fullmatch(inner)
        if not match:
            return Block(stop, None)
        name, body = match.group(1).strip(), match.group(2)
        types = parameter_types(self.tools, name)
        args = {}
        for key, raw in _PARAM.findall(body):
            args[key.strip()] = typed_value(raw, types.get(key.strip()))
        leftover = _PARAM.sub("", body).strip()
        return Block(stop, None if leftover else [(name, args)])
