"""A Responses request -> chat messages and `ChatModel.build_request` arguments.

Input items become OpenAI chat messages (function calls join the assistant message before them, function call
outputs become `tool` messages, reasoning rides on the next assistant message as `reasoning_content`), so the
chat template sees a Responses conversation exactly as it would see the same chat completion. Fields that would
change the result but cannot be served (built-in tools, background mode, truncation "auto"...) are a 400 naming
the field; other unknown fields are ignored with one logged warning per request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import TypeAdapter

from chatplex.errors import InvalidRequestError
from chatplex.messages import TOOL_NAME
from chatplex.server.convert import image_url_part
from chatplex.server.errors import unsupported
from chatplex.server.responses import schemas as s
from chatplex.types import Message

logger = logging.getLogger(__name__)

_ITEMS = TypeAdapter(list[s.InputItem])
# Fields OpenAI defines that change nothing here (routing, caching and billing hints): accepted silently.
_IGNORED = {"service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "stream_options"}
_TOOL_CHOICES = ("auto", "none", "required")
# Agents ask for encrypted reasoning to send back next turn; reasoning here is plain text in the output already.
_INCLUDABLE = {"reasoning.encrypted_content"}


def check_supported(body: s.ResponsesRequest) -> None:
    """Raise a 400 naming the first field whose value this server cannot honour."""
    if body.background:
        raise unsupported("background", "background responses are not supported; send background=false.")
    if body.conversation is not None:
        raise unsupported("conversation", "conversations are not supported; use previous_response_id.")
    if body.prompt is not None:
        raise unsupported("prompt", "stored prompt templates are not supported; send instructions and input.")
    if body.truncation not in (None, "disabled"):
        raise unsupported("truncation", "only 'disabled' is supported (an input too long is a 400).")
    if body.max_tool_calls is not None:
        raise unsupported("max_tool_calls", "limiting built-in tool calls is not supported.")
    if body.top_logprobs:
        raise unsupported("top_logprobs", "logprobs are not returned by /v1/responses; use /v1/chat/completions.")
    wanted = [name for name in body.include or [] if name not in _INCLUDABLE]
    if wanted:
        raise unsupported("include", f"{wanted[0]!r}: this extra output data is not available.")
    extra = sorted(set(body.model_extra or {}) - _IGNORED)
    if extra:
        logger.warning("responses: ignoring unknown request fields: %s", ", ".join(extra))


def input_messages(body: s.ResponsesRequest) -> list[Message]:
    """The request's `input` as chat messages (a string is one user message)."""
    if body.input is None or isinstance(body.input, str):
        return [] if body.input is None else [{"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        if isinstance(item, s.FunctionCallItem):
            _check_arguments(item.arguments, f"input[{i}].arguments")
    return items_to_messages(body.input)


def output_messages(items: list[s.OutputItem]) -> list[Message]:
    """A response's output items as chat messages (for the next turn of `previous_response_id`)."""
    return items_to_messages(_ITEMS.validate_python([item.model_dump() for item in items]), "output")


def items_to_messages(items: list[Any], where: str = "input") -> list[Message]:
    """Input items -> chat messages; errors name `where[i]`."""
    out: list[Message] = []
    reasoning = ""  # a reasoning item's text, for the assistant message that follows it
    for i, item in enumerate(items):
        param = f"{where}[{i}]"
        if isinstance(item, s.ReasoningItem):
            reasoning += "".join(p.text for p in (item.content or item.summary))
            continue
        if isinstance(item, s.FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output, param + ".output")})
            continue
        if isinstance(item, s.FunctionCallItem):
            call = {"name": item.name, "arguments": item.arguments}
            message = _with_call(out, {"id": item.call_id, "type": "function", "function": call})
        else:
            role = "system" if item.role == "developer" else item.role
            message = {"role": role, "content": _content(item.content, param + ".content")}
            out.append(message)
        if reasoning and message["role"] == "assistant":
            message["reasoning_content"], reasoning = reasoning, ""
    return out


def _with_call(out: list[Message], call: dict[str, Any]) -> Message:
    """Add `call` to the assistant message just before (calls made with some text), else to a new one."""
    if out and out[-1]["role"] == "assistant":
        out[-1]["tool_calls"] = [*(out[-1].get("tool_calls") or []), call]
        return out[-1]
    out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return out[-1]


def _check_arguments(arguments: str, param: str) -> None:
    try:
        json.loads(arguments or "{}")
    except json.JSONDecodeError:
        raise InvalidRequestError(f"{param}: not valid JSON.", param=param) from None


def _content(content: str | list[Any], param: str) -> str | list[dict[str, Any]]:
    """Text parts join into one string; with an image they stay chat content parts."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, s.ImagePart):
            if not part.image_url:
                raise unsupported(f"{param}[{j}].file_id", "images are taken by image_url (a URL or data URL) only.")
            parts.append(image_url_part(part.image_url))
        else:
            parts.append({"type": "text", "text": part.refusal if isinstance(part, s.RefusalPart) else part.text})
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _text(output: str | list[Any], param: str) -> str:
    content = _content(output, param)
    if not isinstance(content, str):
        raise unsupported(param, "a function call's output must be text.")
    return content


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools -> chat completions' `{"type": "function", "function": {...}}`."""
    out = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind != "function":
            raise unsupported(f"tools[{i}].type", f"{kind!r} tools are not supported; only 'function' tools are.")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise InvalidRequestError(
                f"tools[{i}].name: must be 1 to 64 letters, digits, underscores or dashes.", param=f"tools[{i}].name"
            )
        if not isinstance(tool.get("parameters") or {}, dict):
            raise InvalidRequestError(f"tools[{i}].parameters: must be a JSON schema object.", param=f"tools[{i}]")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out or None


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """ "auto" / "none" / "required" as they are; `{"type": "function", "name": ...}` in the chat shape."""
    if choice is None or choice in _TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and isinstance(choice.get("type"), str) and choice["type"] != "function":
        raise unsupported("tool_choice", f"{choice['type']!r}: only function tools can be chosen.")
    raise InvalidRequestError(
        'tool_choice: must be "auto", "none", "required" or {"type": "function", "name": ...}.', param="tool_choice"
    )


def response_format(text: s.TextConfig | None) -> dict[str, Any] | None:
    """`text.format` -> chat completions' `response_format` (None for plain text)."""
    fmt = text.format if text is not None else None
    kind = fmt.get("type") if fmt is not None else "text"
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise InvalidRequestError(
            f"text.format.type: {kind!r} is not one of 'text', 'json_object', 'json_schema'.", param="text.format.type"
        )
    if not isinstance(fmt.get("schema"), dict):
        raise InvalidRequestError("text.format.schema: must be a JSON schema object.", param="text.format.schema")
    spec = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
    return {"type": "json_schema", "json_schema": spec}


def request_kwargs(body: s.ResponsesRequest, conversation: list[Message]) -> dict[str, Any]:
    """`build_request(**kwargs)` for this request, `conversation` being the messages without instructions."""
    system = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    if not conversation:
        raise InvalidRequestError("input: send a string or a non-empty list of input items.", param="input")
    kw: dict[str, Any] = {"messages": system + conversation, "tools": chat_tools(body.tools)}
    optional = {
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tool_choice": chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": response_format(body.text),
    }
    kw.update({k: v for k, v in optional.items() if v is not None})
    effort = body.reasoning.effort if body.reasoning is not None else None
    if effort is not None:
        # The template's own switches, where it has them (gpt-oss reads reasoning_effort, Qwen3 enable_thinking).
        kw["template_kwargs"] = {"reasoning_effort": effort, "enable_thinking": effort != "none"}
    return kw


# chatplex's (or chat completions') field -> the Responses field the client sent
_RENAMES = (
    ("max_new_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
    ("messages", "input"),
)


@contextmanager
def responses_param_names() -> Iterator[None]:
    """Errors raised inside name the Responses field (`max_output_tokens`, `text.format`, `input`)."""
    try:
        yield
    except InvalidRequestError as e:
        for old, new in _RENAMES:
            param = e.param or ""
            if param == old or param.startswith((old + ".", old + "[")):
                # Chat message indices do not match input items, so those name the whole input.
                e.param = new if old == "messages" else new + param[len(old) :]
                e.message = e.message.replace(param, e.param, 1)
                e.args = (e.message,)
                break
        raise
