"""Pythonic call lists: the whole reply is `[get_weather(city="Paris"), get_time()]` (Llama 3.2 and 4, Gemma 3),
optionally wrapped in Llama 4's `<|python_start|>...<|python_end|>`. Arguments must be literals."""

from __future__ import annotations

import ast
from typing import Any

from chatplex.templates.tool_parsers.base import Block, ToolParser

START, END = "<|python_start|>", "<|python_end|>"
# JSON spellings models use inside Python calls.
_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        # A None key is `**mapping` unpacking, which literal_eval refuses too (a malformed call).
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]  # see above
    return ast.literal_eval(node)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ValueError("not a function name")


def parse_call_list(source: str) -> list[tuple[str, dict[str, Any]]] | None:
    """`[f(a=1), g()]` -> [("f", {"a": 1}), ("g", {})]; None where it is not a list of keyword calls."""
    try:
        tree = ast.parse(source.strip(), mode="eval").body
        if not isinstance(tree, ast.List) or not tree.elts:
            return None
        calls = []
        for node in tree.elts:
            if not isinstance(node, ast.Call) or node.args:
                return None
            calls.append((_dotted(node.func), {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}))
        return calls
    except (SyntaxError, ValueError, TypeError, RecursionError):
        return None


class PythonicParser(ToolParser):
    name = "pythonic"
    start_markers = ("[", START)
    anchored = True

    def read_block(self, text: str, final: bool) -> Block | None:
        if not final:
            return None  # only a complete reply tells a call list from text that starts with "["
        body = text.strip()
        if body.startswith(START):
            body = body[len(START) :].removesuffix(END)
        return Block(len(text), parse_call_list(body))
