"""Ollama chat and generate bodies -> `ChatModel.build_request` arguments.

Images (base64 strings) become data-URL image parts of their message; Ollama's tool calls (arguments as an object,
no ids) and tool results (`tool_name`) become OpenAI's; `format` becomes `response_format`; `think` becomes the
template's `enable_thinking` (and `reasoning_effort` for a level). Fields chatplex cannot honour are refused, since
ignoring them would silently change the reply: generate's Go `template` and `suffix`, and `raw` with images or format.
"""

from __future__ import annotations

from typing import Any

from chatplex.chat_model import ChatModel
from chatplex.server.convert import data_url, image_url_part
from chatplex.server.errors import unsupported
from chatplex.server.ollama.options import sampling_kwargs
from chatplex.server.ollama.schemas import ChatRequest, Format, GenerateRequest, Message, Think, ToolCall

# The first base64 characters of each format's magic bytes: the data URL's media type, without decoding.
_MEDIA_TYPES = {"iVBORw0KGgo": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif", "UklGR": "image/webp"}


def _data_url(image: str) -> str:
    kind = next((mime for prefix, mime in _MEDIA_TYPES.items() if image.startswith(prefix)), "image/png")
    return data_url(kind, image)


def _content(text: str, images: list[str] | None) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [image_url_part(_data_url(image)) for image in images]


def _tool_calls(index: int, calls: list[ToolCall]) -> list[dict[str, Any]]:
    # Ollama's calls have no ids; templates that pair results with calls by id get stable made-up ones.
    return [
        {
            "id": f"call_{index}_{j}",
            "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments},
        }
        for j, call in enumerate(calls)
    ]


def _message(index: int, message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": _content(message.content or "", message.images)}
    if message.tool_calls:
        out["tool_calls"] = _tool_calls(index, message.tool_calls)
    if message.tool_name:
        out["name"] = message.tool_name
    return out


def _response_format(value: Format | None) -> dict[str, Any] | None:
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    return None


def _think(value: Think | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"enable_thinking": value}
    return {"enable_thinking": True, "reasoning_effort": value}


def check_think(think: Think | None, chat_model: ChatModel) -> None:
    """Ollama's 400 for `think` on a model whose replies have no thinking to split off (its template has no
    reasoning parser). Remote engines render their own templates: there the request goes through as asked."""
    template = chat_model.template
    if think and template is not None and not template.reasoning_parser:
        raise unsupported("think", f"{chat_model.model_name} does not support thinking.")


def _common(body: ChatRequest | GenerateRequest) -> dict[str, Any]:
    kw = sampling_kwargs(body.options)
    if body.logprobs is not None:
        kw["logprobs"] = body.logprobs
    if body.top_logprobs is not None:
        kw["top_logprobs"] = body.top_logprobs
    template_kwargs = _think(body.think)
    if template_kwargs:
        kw["template_kwargs"] = template_kwargs
    return kw


def chat_kwargs(body: ChatRequest) -> dict[str, Any]:
    """build_request(**kwargs) for /api/chat."""
    kw = _common(body)
    kw["messages"] = [_message(i, m) for i, m in enumerate(body.messages)]
    kw["tools"] = body.tools or None
    response_format = _response_format(body.format)
    if response_format is not None:
        kw["response_format"] = response_format
    return kw


def generate_kwargs(body: GenerateRequest) -> dict[str, Any]:
    """build_request(**kwargs) for /api/generate: the prompt as is when `raw`, else as a user message."""
    if body.template:
        raise unsupported("template", "Ollama's Go templates are not supported; send raw: true with the prompt.")
    if body.suffix:
        raise unsupported("suffix", "insertion (suffix) is not supported.")
    kw = _common(body)
    if body.raw:
        if body.images:
            raise unsupported("images", "images need the chat template; send them without raw: true.")
        if _response_format(body.format) is not None:
            raise unsupported("format", "format needs the chat template; send it without raw: true.")
        return {**kw, "prompt": body.prompt}
    kw["messages"] = [{"role": "user", "content": _content(body.prompt, body.images)}]
    if body.system is not None:
        kw["system"] = body.system
    response_format = _response_format(body.format)
    if response_format is not None:
        kw["response_format"] = response_format
    return kw
