"""OpenAI-style chat messages: validate and normalise before any template sees them."""

from __future__ import annotations

import json
import re
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.types import Message

ROLES = ("system", "user", "assistant", "tool")
# OpenAI's newer and older names; looked up with a message's raw role, which may be missing (None).
ROLE_ALIASES: dict[str | None, str] = {"developer": "system", "function": "tool"}
TEXT_PART_TYPES = ("text", "input_text", "output_text")
MEDIA_PART_TYPES = ("image_url", "image", "input_audio", "audio_url", "video_url", "video")

# OpenAI's rule for function names. A name outside it could close the template's tool markup (`</tool_call>`),
# carry Jinja syntax into a prompt, or fill the context by itself.
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _bad(index: int, message: str, field: str = "") -> InvalidRequestError:
    param = f"messages[{index}]{'.' + field if field else ''}"
    return InvalidRequestError(f"{param}: {message}", param=param)


def _text_of_parts(index: int, parts: list[Any], *, allow_media: bool) -> str | list[dict[str, Any]]:
    """Text-only parts collapse to one string; parts with media stay a list for the multimodal processor."""
    has_media = False
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or "type" not in part:
            raise _bad(index, "each content part must be an object with a 'type'.", f"content[{j}]")
        kind = part["type"]
        if kind in TEXT_PART_TYPES:
            if not isinstance(part.get("text"), str):
                raise _bad(index, "a text part needs a string 'text'.", f"content[{j}].text")
        elif kind in MEDIA_PART_TYPES:
            if not allow_media:
                raise _bad(index, f"{kind} parts are only allowed in user messages.", f"content[{j}]")
            has_media = True
        else:
            valid = ", ".join(TEXT_PART_TYPES + MEDIA_PART_TYPES)
            raise _bad(index, f"unknown content part type {kind!r}; valid types: {valid}.", f"content[{j}].type")
    if has_media:
        return parts
    return "".join(p["text"] for p in parts)


def _normalise_tool_calls(index: int, calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise _bad(index, "tool_calls must be a list.", "tool_calls")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(index, "each tool call needs function.name.", f"tool_calls[{j}]")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            # Templates expect the arguments object; a JSON string rendered as is would be encoded twice.
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise _bad(
                    index, "function.arguments is not valid JSON.", f"tool_calls[{j}].function.arguments"
                ) from None
        out.append({**call, "type": call.get("type", "function"), "function": {**fn, "arguments": args}})
    return out


def normalize_messages(
    messages: Any,
    *,
    system: str | None = None,
    default_system: str | None = None,
    require_reply: bool = True,
) -> list[Message]:
    """Validate OpenAI-style messages and return normalised copies.

    Text-only content lists become strings; a `system` argument replaces a leading system message (or is
    prepended); `default_system` is used only when there is no system message at all. Errors name the index.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: must be a non-empty list of messages.", param="messages")
    out: list[Message] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(i, "each message must be an object with 'role' and 'content'.")
        role = ROLE_ALIASES.get(msg.get("role"), msg.get("role"))
        if role not in ROLES:
            raise _bad(i, f"unknown role {msg.get('role')!r}; valid roles: {', '.join(ROLES)}.", "role")
        has_calls = role == "assistant" and bool(msg.get("tool_calls"))
        if "content" not in msg and not has_calls:
            raise _bad(i, "missing 'content'.", "content")
        content = msg.get("content")
        if content is None:
            if not has_calls:
                raise _bad(i, "content may only be null for an assistant message with tool_calls.", "content")
            content = ""
        elif isinstance(content, list):
            content = _text_of_parts(i, content, allow_media=role == "user")
        elif not isinstance(content, str):
            raise _bad(i, "content must be a string or a list of content parts.", "content")
        norm: Message = {**msg, "role": role, "content": content}
        if has_calls:
            norm["tool_calls"] = _normalise_tool_calls(i, msg["tool_calls"])
        else:
            norm.pop("tool_calls", None)
        out.append(norm)
    if require_reply and out[-1]["role"] == "assistant":
        raise _bad(
            len(out) - 1, "the last message is from the assistant; a reply needs a user or tool message last.", "role"
        )
    if system is not None:
        if not isinstance(system, str):
            raise InvalidRequestError("system: must be a string.", param="system")
        if out[0]["role"] == "system":
            out[0] = {**out[0], "content": system}
        else:
            out.insert(0, {"role": "system", "content": system})
    elif default_system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": default_system})
    return out


def validate_tools(tools: Any) -> list[dict[str, Any]] | None:
    """OpenAI tool definitions (or bare function schemas, as LLaMA-Factory takes them) -> OpenAI shape."""
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise InvalidRequestError("tools: not valid JSON.", param="tools") from None
    if not isinstance(tools, list):
        raise InvalidRequestError("tools: must be a list of tool definitions.", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequestError(f"tools[{i}]: needs function.name.", param=f"tools[{i}]")
        if not TOOL_NAME.fullmatch(fn["name"]):
            raise InvalidRequestError(
                f"tools[{i}].function.name: {fn['name'][:80]!r} is not a valid tool name; use 1 to 64 letters, "
                "digits, underscores or dashes (OpenAI's rule).",
                param=f"tools[{i}].function.name",
            )
        out.append(tool)
    return out or None
