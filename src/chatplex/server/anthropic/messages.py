"""Anthropic messages (content blocks) -> chatplex's OpenAI-style chat messages.

A user turn's `tool_result` blocks become `tool` messages (Anthropic puts results first in the turn), followed by
one user message for its text and images. An assistant turn's `tool_use` blocks become `tool_calls`, its
`thinking` blocks `reasoning_content` (which templates that keep past thinking render). Errors name the block as
the client wrote it: `messages[2].content[0].tool_use_id`.
"""

from __future__ import annotations

from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.server.anthropic.schemas import InputMessage
from chatplex.server.convert import data_url, image_url_part
from chatplex.server.errors import unsupported
from chatplex.types import Message

# Blocks Anthropic defines that carry nothing a local model can use (or that only Anthropic can verify).
_SKIPPED = ("redacted_thinking",)
_IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def _blocks(param: str, content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A message's content as a list of blocks, each with a string `type`."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    for j, block in enumerate(content):
        if not isinstance(block.get("type"), str):
            raise _bad(f"{param}[{j}].type", "each content block needs a string 'type'.")
    return content


def _text(param: str, block: dict[str, Any]) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{param}.text", "a text block needs a string 'text'.")
    return text


def _image(param: str, block: dict[str, Any]) -> dict[str, Any]:
    """An image block as an OpenAI `image_url` part (base64 data becomes a data URL)."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media, data = source.get("media_type"), source.get("data")
        if media not in _IMAGE_MEDIA_TYPES:
            raise _bad(f"{param}.source.media_type", f"must be one of {', '.join(_IMAGE_MEDIA_TYPES)}.")
        if not isinstance(data, str) or not data:
            raise _bad(f"{param}.source.data", "needs the image as a base64 string.")
        return image_url_part(data_url(media, data))
    if kind == "url" and isinstance(source, dict):
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise _bad(f"{param}.source.url", "needs a URL string.")
        return image_url_part(url)
    raise _bad(f"{param}.source", "an image source must be {type: base64, media_type, data} or {type: url, url}.")


def _tool_result(param: str, block: dict[str, Any]) -> tuple[Message, list[dict[str, Any]]]:
    """A tool message for the result, and the images it held (tool messages take text only)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{param}.tool_use_id", "a tool_result block needs the id of its tool_use.")
    texts, images = [], []
    for j, part in enumerate(_blocks(f"{param}.content", block.get("content", ""))):
        where = f"{param}.content[{j}]"
        if part["type"] == "text":
            texts.append(_text(where, part))
        elif part["type"] == "image":
            images.append(_image(where, part))
        else:
            raise _bad(f"{where}.type", f"a tool result holds text and image blocks, not {part['type']!r}.")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        # Chat templates have no field for a failed call: the model learns it from the text.
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user_turn(param: str, blocks: list[dict[str, Any]]) -> list[Message]:
    results: list[Message] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where, kind = f"{param}[{j}]", block["type"]
        if kind == "tool_result":
            result, images = _tool_result(where, block)
            results.append(result)
            parts.extend(images)
        elif kind == "text":
            parts.append({"type": "text", "text": _text(where, block)})
        elif kind == "image":
            parts.append(_image(where, block))
        elif kind not in _SKIPPED:
            raise _unknown_block(where, kind, ("text", "image", "tool_result"))
    if not parts and results:
        return results
    if all(p["type"] == "text" for p in parts):
        return [*results, {"role": "user", "content": "".join(p["text"] for p in parts)}]
    return [*results, {"role": "user", "content": parts}]


def _tool_call(param: str, block: dict[str, Any]) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise _bad(param, "a tool_use block needs a string 'id' and 'name'.")
    if not isinstance(arguments, dict):
        raise _bad(f"{param}.input", "must be an object (the tool's arguments).")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _assistant_turn(param: str, blocks: list[dict[str, Any]]) -> Message:
    texts, thinking, calls = [], [], []
    for j, block in enumerate(blocks):
        where, kind = f"{param}[{j}]", block["type"]
        if kind == "text":
            texts.append(_text(where, block))
        elif kind == "thinking":
            value = block.get("thinking")
            if not isinstance(value, str):
                raise _bad(f"{where}.thinking", "a thinking block needs a string 'thinking'.")
            thinking.append(value)
        elif kind == "tool_use":
            calls.append(_tool_call(where, block))
        elif kind not in _SKIPPED:
            raise _unknown_block(where, kind, ("text", "thinking", "tool_use"))
    message: Message = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message


def _unknown_block(param: str, kind: str, valid: tuple[str, ...]) -> Exception:
    if kind in ("document", "search_result", "server_tool_use", "container_upload"):
        return unsupported(f"{param}.type", f"{kind!r} blocks are not supported by chatplex.")
    return _bad(f"{param}.type", f"unknown content block type {kind!r}; valid here: {', '.join(valid)}.")


def chat_messages(messages: list[InputMessage]) -> list[Message]:
    """OpenAI-style messages for `ChatModel.build_request`, in order."""
    if messages[-1].role == "assistant":
        last = f"messages[{len(messages) - 1}]"
        # Continuing a partial assistant turn needs a template rendered without its generation prompt.
        raise unsupported(last, "a final assistant turn (prefill) is not supported; end with a user turn.")
    out: list[Message] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}].content"
        blocks = _blocks(param, message.content)
        if message.role == "assistant":
            out.append(_assistant_turn(param, blocks))
        else:
            out.extend(_user_turn(param, blocks))
    return out


def system_text(system: str | list[dict[str, Any]] | None) -> str | None:
    """The system prompt: a string, or text blocks joined by newlines."""
    if system is None or isinstance(system, str):
        return system
    texts = []
    for j, block in enumerate(_blocks("system", system)):
        if block["type"] != "text":
            raise _bad(f"system[{j}].type", "system blocks must be text blocks.")
        texts.append(_text(f"system[{j}]", block))
    return "\n".join(texts)
