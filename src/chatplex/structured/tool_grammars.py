"""Forced tool calls as Lark grammars, one builder per tool-call family.

Each grammar writes exactly what the family's parser in `templates/tool_parsers/` reads back (and what the
family's chat template writes for a past call). Arguments are `%json` with the tool's parameter schema in the
fixed layout of `spec.JSON_LAYOUT`, so they validate against the schema by construction. The families that write
arguments one by one (`qwen3_coder`, `glm4` XML, `pythonic` keyword calls) are built in `arg_grammars.py`.

Marker strings (`[TOOL_CALLS]`, `<｜tool▁calls▁begin｜>`, `<|tool_call|>`) are special tokens in their models'
real tokenizers but plain text in others. A grammar cannot know which, so markers are written as rules of their
own (`mark0: "..."`, one line each); `matcher.GrammarCompiler` swaps a marker for its token id where the tokenizer
has it as a special token, and leaves the text literal otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from chatplex.structured import arg_grammars, llamafactory_grammars

# `mark<N>: "<json string>"` lines: the marker rules the compiler may turn into special-token references.
MARKER_LINE = re.compile(r'^(mark\d+): ("(?:[^"\\]|\\.)*")$', re.MULTILINE)


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def _params(tool: dict[str, Any], layout: dict[str, Any] | None = None) -> dict[str, Any]:
    params = _function(tool).get("parameters") or {"type": "object"}
    return params if layout is None else {**params, "x-guidance": layout}


def _call_object(tools: list[dict[str, Any]], args_key: str, layout: dict[str, Any]) -> str:
    """`%json` for `{"name": <one of tools>, args_key: {...}}` (the JSON-object call families)."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": _function(t)["name"]}, args_key: _params(t)},
            "required": ["name", args_key],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return f"%json {json.dumps({'anyOf': calls, 'x-guidance': layout})}"


class _Lark:
    """Collects rules; string literals that are markers become their own `markN` rule."""

    def __init__(self) -> None:
        self.rules: list[str] = []
        self.markers: dict[str, str] = {}

    def mark(self, text: str) -> str:
        if text not in self.markers:
            self.markers[text] = f"mark{len(self.markers)}"
        return self.markers[text]

    def text(self) -> str:
        marks = [f"{rule}: {json.dumps(text)}" for text, rule in self.markers.items()]
        return "\n".join(self.rules + marks) + "\n"


def _repeat(item: str, between: str, many: bool) -> str:
    """`item` once, or one or more times separated by `between` when several calls are allowed."""
    if not many:
        return item
    sep = f"{json.dumps(between)} " if between else ""
    return f"{item} ({sep}{item})*"


def _hermes(g: _Lark, tools, many, layout) -> None:
    g.rules += [
        f"start: {_repeat('call', chr(10), many)}",
        f'call: "<tool_call>\\n" {_call_object(tools, "arguments", layout)} "\\n</tool_call>"',
    ]


def _llama3_json(g: _Lark, tools, many, layout) -> None:
    g.rules += [f"start: {_call_object(tools, 'parameters', layout)}"]


def _mistral(g: _Lark, tools, many, layout) -> None:
    # As Mistral's template writes past calls: `[TOOL_CALLS] [{...}, {...}]`.
    g.rules += [
        f'start: {g.mark("[TOOL_CALLS]")} " [" {_repeat("call", ", ", many)} "]"',
        f"call: {_call_object(tools, 'arguments', layout)}",
    ]


def _phi4_mini(g: _Lark, tools, many, layout) -> None:
    call = f"{g.mark('<|tool_call|>')} {_call_object(tools, 'arguments', layout)} {g.mark('<|/tool_call|>')}"
    g.rules += [f"start: {_repeat('call', '', many)}", f"call: {call}"]


_DS_CALLS = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>")
_DS_CALL = ("<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>")


def _deepseek(v31: bool) -> Callable[..., None]:
    """DeepSeek writes the name outside the JSON: one alternative per tool, name literal, arguments `%json`."""

    def build(g: _Lark, tools, many, layout) -> None:
        begin, end, sep = (g.mark(m) for m in _DS_CALL)
        alts = []
        for tool in tools:
            name, args = json.dumps(_function(tool)["name"]), f"%json {json.dumps(_params(tool, layout))}"
            if v31:
                alts.append(f"{begin} {name} {sep} {args} {end}")
            else:
                alts.append(f'{begin} "function" {sep} {name} "\\n```json\\n" {args} "\\n```" {end}')
        calls_begin, calls_end = (g.mark(m) for m in _DS_CALLS)
        between = "" if v31 else "\n"
        g.rules += [
            f"start: {calls_begin} {_repeat('call', between, many)} {calls_end}",
            "call: " + "\n    | ".join(alts),
        ]

    return build


BUILDERS: dict[str, Callable[..., None]] = {
    "hermes": _hermes,
    "llama3_json": _llama3_json,
    "mistral": _mistral,
    "phi4_mini": _phi4_mini,
    "deepseek_v3": _deepseek(v31=False),
    "deepseek_v31": _deepseek(v31=True),
    "qwen3_coder": arg_grammars.qwen3_coder,
    "glm4": arg_grammars.glm4,
    "pythonic": arg_grammars.pythonic,
    # LLaMA-Factory's own tool formats (its `tool_format`s that no model family here writes)
    "react": llamafactory_grammars.react,
    "chatglm": llamafactory_grammars.chatglm,
    "minimax1": llamafactory_grammars.minimax1,
    "minimax2": llamafactory_grammars.minimax2,
    "seed_oss": llamafactory_grammars.seed_oss,
    "lfm2": llamafactory_grammars.lfm2,
    "gemma4": llamafactory_grammars.gemma4,
}


def tool_call_lark(tool_parser: str, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> str:
    """The Lark grammar for one or (`many`) several calls of `tools` in `tool_parser`'s syntax."""
    g = _Lark()
    BUILDERS[tool_parser](g, tools, many, layout)
    return g.text()
