"""GLM-4.5/4.6 calls: `<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n...</tool_call>` (the
closing tag may be missing, as LLaMA-Factory writes them).
String values are bare text, others JSON (as GLM's template writes them); the schema settles doubtful cases."""

from __future__ import annotations

import re

from chatplex.templates.tool_parsers.base import Block, ToolParser, parameter_types, typed_value

_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)
_NAME = re.compile(r"\s*([^\s<]+)\s*")


class Glm4Parser(ToolParser):
    name = "glm4"
    start_markers = ("<tool_call>",)
    end_marker = "</tool_call>"

    def read_block(self, text: str, final: bool) -> Block | None:
        block = self.delimited(text)
        if block is None:
            # LLaMA-Factory's glm4_moe format writes no closing tag: a call then ends at the next call or with
            # the reply (the turn's stop word ends generation)
            following = text.find(self.start_markers[0], len(self.start_markers[0]))
            if following >= 0:
                block = (following, text[len(self.start_markers[0]) : following])
            elif final:
                block = (len(text), text[len(self.start_markers[0]) :])
            else:
                return None
        stop, body = block
        head = _NAME.match(body)
        if not head or _PAIR.sub("", body[head.end() :]).strip():
            return Block(stop, None)
        name = head.group(1)
        types = parameter_types(self.tools, name)
        args = {key.strip(): typed_value(value, types.get(key.strip())) for key, value in _PAIR.findall(body)}
        return Block(stop, [(name, args)])
