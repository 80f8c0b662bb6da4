"""Tool-call parsers, one module per output format, all with the `ToolParser` interface:

    parser = get_tool_parser("hermes", tools=request_tools)
    parser.parse(text) -> ParsedOutput(content, tool_calls)          # a finished reply
    parser.feed(delta) -> list[DeltaEvent]; parser.finish() -> ...    # streaming, one parser per reply

`assemble(events)` joins streamed events back into a `ParsedOutput` the way OpenAI clients do.
"""

from __future__ import annotations

from typing import Any

from chatplex.errors import ConfigError
from chatplex.templates.tool_parsers.base import (
    DeltaEvent,
    ParsedOutput,
    ToolCall,
    ToolCallDelta,
    ToolParser,
    assemble,
    new_call_id,
)
from chatplex.templates.tool_parsers.deepseek import DeepSeekV3Parser, DeepSeekV31Parser
from chatplex.templates.tool_parsers.glm4 import Glm4Parser
from chatplex.templates.tool_parsers.llama3_json import Llama3JsonParser
from chatplex.templates.tool_parsers.llamafactory import (
    ChatGlm3Parser,
    Gemma4Parser,
    Lfm2Parser,
    MiniMax1Parser,
    MiniMax2Parser,
    SeedOssParser,
)
from chatplex.templates.tool_parsers.mistral import MistralParser
from chatplex.templates.tool_parsers.pythonic import PythonicParser
from chatplex.templates.tool_parsers.qwen3_coder import Qwen3CoderParser
from chatplex.templates.tool_parsers.react import ReactParser
from chatplex.templates.tool_parsers.tagged import HermesParser, Phi4MiniParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    cls.name: cls
    for cls in (
        HermesParser,
        Llama3JsonParser,
        PythonicParser,
        MistralParser,
        Qwen3CoderParser,
        DeepSeekV3Parser,
        DeepSeekV31Parser,
        Glm4Parser,
        Phi4MiniParser,
        ReactParser,
        ChatGlm3Parser,
        MiniMax1Parser,
        MiniMax2Parser,
        SeedOssParser,
        Lfm2Parser,
        Gemma4Parser,
    )
}


def get_tool_parser(name: str, tools: list[dict[str, Any]] | None = None) -> ToolParser:
    """A fresh parser for one reply. `tools` (the request's definitions) lets XML formats type their values."""
    if name not in TOOL_PARSERS:
        raise ConfigError(
            f"tool_parser: {name!r} is not a tool-call parser; choose one of {', '.join(sorted(TOOL_PARSERS))}.",
            param="tool_parser",
        )
    return TOOL_PARSERS[name](tools)


__all__ = [
    "TOOL_PARSERS",
    "DeltaEvent",
    "ParsedOutput",
    "ToolCall",
    "ToolCallDelta",
    "ToolParser",
    "assemble",
    "get_tool_parser",
    "new_call_id",
]
