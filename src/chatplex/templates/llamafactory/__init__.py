"""LLaMA-Factory's chat formats, by the names its `template:` key takes, encoded as LLaMA-Factory encodes them.

A model fine-tuned with LLaMA-Factory learned the prompt format of its `template`; `template: NAME` here gives
that format token for token (checked against goldens rendered by LLaMA-Factory itself, tests/fixtures/llamafactory).
The formats are data exported from LLaMA-Factory (formats.json, see README.md here); `format.py` gives them their
meaning, `tool_formats.py` writes tools and tool calls, `conversation.py` turns OpenAI-style messages into the
alternating turns the formats take.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any, TypeGuard

from chatplex.errors import ConfigError
from chatplex.templates.llamafactory.format import LFFormat, MediaTokens, Slot
from chatplex.templates.llamafactory.tool_formats import FORMATS, ToolFormat


@cache
def _data() -> dict[str, Any]:
    text = resources.files("chatplex.templates.llamafactory").joinpath("formats.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


@cache
def all_tool_formats() -> dict[str, ToolFormat]:
    prompts = _data()["tool_prompts"]
    return {name: make(prompts) for name, make in FORMATS.items()}


def names() -> list[str]:
    return sorted(_data()["templates"])


def is_name(name: str | None) -> TypeGuard[str]:
    """Whether `name` is one of LLaMA-Factory's template names (so it means LLaMA-Factory's format)."""
    return name is not None and name in _data()["templates"]


def source_version() -> str:
    return str(_data()["source"]["version"])


def _slots(raw: list[Any]) -> tuple[Slot, ...]:
    return tuple(raw)


def closest(name: str, choices: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.5)


def load(name: str) -> LFFormat:
    """LLaMA-Factory's format NAME as registered (before its data arguments change it: `LFFormat.configured`)."""
    templates = _data()["templates"]
    if name not in templates:
        near = closest(name, list(templates))
        hint = f" Closest: {', '.join(near)}." if near else ""
        raise ConfigError(f"template: {name!r} is not a LLaMA-Factory template.{hint}", param="template")
    raw = templates[name]
    formats = all_tool_formats()
    tools = raw["tools"]
    return LFFormat(
        name=name,
        encoding=raw["encoding"],
        prefix=_slots(raw["prefix"]),
        system=_slots(raw["system"]),
        user=_slots(raw["user"]),
        assistant=_slots(raw["assistant"]),
        observation=_slots(raw["observation"]),
        function=_slots(raw["function"]),
        tool_format=raw["function_tool_format"],
        calls=formats[raw["function_tool_format"]],
        tools=formats[tools["tool_format"]] if "tool_format" in tools else _slots(tools["slots"]),
        default_system=raw["default_system"],
        stop_words=tuple(raw["stop_words"]),
        thought_words=(raw["thought_words"][0], raw["thought_words"][1]),
        tool_call_words=(raw["tool_call_words"][0], raw["tool_call_words"][1]),
        efficient_eos=raw["efficient_eos"],
        replace_eos=raw["replace_eos"],
        enable_thinking=raw["enable_thinking"],
        preserve_thinking=raw["preserve_thinking"],
        media=MediaTokens(raw["mm_plugin"]["plugin"], {k: v for k, v in raw["mm_plugin"].items() if k != "plugin"}),
    )


__all__ = ["LFFormat", "MediaTokens", "all_tool_formats", "closest", "load", "names", "source_version"]
