"""DeepSeek's marker tokens. V3 and R1 write
`<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>...
<｜tool▁calls▁end｜>`; V3.1 drops the type and the code fence:
`<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`."""

from __future__ import annotations

import re

from chatplex.templates.tool_parsers.base import Block, ToolParser, all_parsed, loads_object

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_CALL = re.compile(re.escape(CALL_BEGIN) + r"(.*?)" + re.escape(CALL_END), re.DOTALL)


class DeepSeekV3Parser(ToolParser):
    special_markers = True
    name = "deepseek_v3"
    start_markers = (CALLS_BEGIN,)
    _body = re.compile(r"\s*function" + re.escape(SEP) + r"([^\n]+)\n```(?:json)?\n(.*?)\n?```\s*", re.DOTALL)

    def _call(self, inner: str) -> tuple[str, dict] | None:
        match = self._body.fullmatch(inner)
        if not match:
            return None
        args = loads_object(match.group(2))
        return (match.group(1).strip(), args) if isinstance(args, dict) else None

    def read_block(self, text: str, final: bool) -> Block | None:
        end = text.find(CALLS_END)
        if end < 0 and not final:
            return None
        # A reply may stop right after its last call without the closing marker.
        stop = len(text) if end < 0 else end + len(CALLS_END)
        body = text[len(CALLS_BEGIN) : len(text) if end < 0 else end]
        calls = [self._call(inner) for inner in _CALL.findall(body)]
        if not calls or None in calls or _CALL.sub("", body).strip():
            return Block(stop, None)
        return Block(stop, all_parsed(calls))


class DeepSeekV31Parser(DeepSeekV3Parser):
    name = "deepseek_v31"
    _body = re.compile(r"\s*([^\n<]+?)" + re.escape(SEP) + r"(.*?)\s*", re.DOTALL)
