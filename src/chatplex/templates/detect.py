"""Which parsers read the replies of a template we did not write (the tokenizer's own, or a file).

The template's text shows the format it teaches the model: the markers it writes into tool-call turns are the
ones the model writes back. Checked in order, most specific first.
"""

from __future__ import annotations

TOOL_MARKERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<tool_call>", "<function="), "qwen3_coder"),
    (("<tool_call>", "<arg_key>"), "glm4"),
    (("<tool_call>",), "hermes"),
    (("<|tool_call|>",), "phi4_mini"),
    (("[TOOL_CALLS]",), "mistral"),
    (("<｜tool▁calls▁begin｜>", "```json"), "deepseek_v3"),
    (("<｜tool▁calls▁begin｜>",), "deepseek_v31"),
    (("func_name1(",), "pythonic"),
    (("<|python_tag|>",), "llama3_json"),
    (('"parameters": ',), "llama3_json"),
)


def detect_tool_parser(source: str | None) -> str | None:
    if not source:
        return None
    return next((name for markers, name in TOOL_MARKERS if all(m in source for m in markers)), None)


def detect_reasoning_parser(source: str | None) -> str | None:
    return "think" if source and "<think>" in source and "</think>" in source else None
