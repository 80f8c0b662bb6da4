"""An Anthropic request body -> `ChatModel.build_request` arguments.

`tool_choice` maps onto chatplex's (any -> "required", tool -> a named function, none -> tools hidden), which
constrained decoding enforces; `thinking` switches the template's `enable_thinking` (templates without the switch
ignore it; `budget_tokens` has no counterpart and is not enforced). Unknown fields (`service_tier`,
`cache_control`...) are logged and ignored: none of them changes what a local model generates.
"""

from __future__ import annotations

import logging
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.server.anthropic.messages import chat_messages, system_text
from chatplex.server.anthropic.schemas import CountTokensRequest, MessagesRequest, ToolChoice, ToolDefinition
from chatplex.server.errors import unsupported

logger = logging.getLogger(__name__)

# Anthropic field -> chatplex generation argument
_SAMPLING_FIELDS = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop_sequences": "stop",
}


def _tools(tools: list[ToolDefinition]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise unsupported(f"tools[{i}].type", f"Anthropic's server tool {tool.type!r} is not available here.")
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    """tool_choice and parallel_tool_calls arguments."""
    kw: dict[str, Any] = {}
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequestError("tool_choice.name: type 'tool' needs the tool's name.", param="tool_choice.name")
        kw["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        kw["tool_choice"] = {"any": "required"}.get(choice.type, choice.type)
    if choice.disable_parallel_tool_use:
        kw["parallel_tool_calls"] = False
    return kw


def prompt_kwargs(body: CountTokensRequest) -> dict[str, Any]:
    """build_request(**kwargs) for what the model reads: messages, system, tools, thinking, output format."""
    kw: dict[str, Any] = {"messages": chat_messages(body.messages), "system": system_text(body.system)}
    if body.tools:
        kw["tools"] = _tools(body.tools)
    if body.tool_choice is not None:
        kw.update(_tool_choice(body.tool_choice))
    if body.thinking is not None:
        kw["template_kwargs"] = {"enable_thinking": body.thinking.type != "disabled"}
    fmt = body.output_config.format if body.output_config else None
    if fmt is not None:
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.json_schema}}
    return kw


def message_kwargs(body: MessagesRequest) -> dict[str, Any]:
    """build_request(**kwargs) for a message."""
    extra = sorted(body.model_extra or {})
    if extra:
        logger.warning("messages: ignoring unknown request fields: %s", ", ".join(extra))
    kw = prompt_kwargs(body)
    for field, name in _SAMPLING_FIELDS.items():
        value = getattr(body, field)
        if value is not None and value != []:
            kw[name] = value
    return kw
