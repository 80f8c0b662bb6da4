"""OpenAI request bodies -> `ChatModel.build_request` arguments.

Fields that would silently change results if ignored (legacy `function_call` forcing, echo, suffix, best_of...)
are rejected as unsupported; other unknown fields are ignored with one logged warning per request.
`response_format` and `tool_choice` pass through to `ChatModel.build_request`, which enforces them by
constrained decoding (or raises `UnsupportedFeatureError` naming the field on engines that cannot).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.server.errors import unsupported
from chatplex.server.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

logger = logging.getLogger(__name__)

# request field -> chatplex generation argument (None values are left out so the model's defaults apply)
_SAMPLING_FIELDS = {
    "n": "n",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
    "seed": "seed",
    "logit_bias": "logit_bias",
    "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos",
    "stop_token_ids": "stop_token_ids",
    "skip_special_tokens": "skip_special_tokens",
    "do_sample": "do_sample",
}
_TOOL_CHOICES = (None, "none", "auto")


def image_url_part(url: str) -> dict[str, Any]:
    """An OpenAI chat content part for the image at `url` (a web URL or a data URL)."""
    return {"type": "image_url", "image_url": {"url": url}}


def data_url(media_type: str, data: str) -> str:
    """A data URL for base64 `data` of `media_type` (e.g. "image/png")."""
    return f"data:{media_type};base64,{data}"


def _warn_unknown(body: SamplingFields, endpoint: str) -> None:
    extra = sorted(body.model_extra or {})
    if extra:
        logger.warning("%s: ignoring unknown request fields: %s", endpoint, ", ".join(extra))


def _sampling_kwargs(body: SamplingFields) -> dict[str, Any]:
    kw = {name: getattr(body, field) for field, name in _SAMPLING_FIELDS.items()}
    return {k: v for k, v in kw.items() if v is not None}


def llamafactory_fields(kw: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's API meaning of the fields where it differs from OpenAI's: `presence_penalty` is passed to
    transformers as `repetition_penalty` (1.0 neutral, multiplicative), and a `function` message is the assistant's
    tool call (its content the JSON list of {name, arguments}), where OpenAI's legacy `function` role is a result."""
    kw = dict(kw)
    if "presence_penalty" in kw:
        if "repetition_penalty" in kw:
            raise InvalidRequestError(
                "presence_penalty: in LLaMA-Factory's API mode it is the repetition penalty; "
                "give one of presence_penalty and repetition_penalty.",
                param="presence_penalty",
            )
        kw["repetition_penalty"] = kw.pop("presence_penalty")
    messages = []
    for i, message in enumerate(kw.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "function":
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": _function_turn_calls(i, message.get("content")),
            }
        messages.append(message)
    if "messages" in kw:
        kw["messages"] = messages
    return kw


def _function_turn_calls(index: int, content: Any) -> list[dict[str, Any]]:
    param = f"messages[{index}].content"
    try:
        calls = json.loads(content) if isinstance(content, str) else None
    except json.JSONDecodeError:
        calls = None
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list) or not all(isinstance(c, dict) and "name" in c for c in calls):
        raise InvalidRequestError(
            f"{param}: a function message (LLaMA-Factory's API mode) holds the assistant's "
            'tool calls as JSON: [{"name": ..., "arguments": {...}}].',
            param=param,
        )
    return [
        {
            "id": f"call_{index}_{j}",
            "type": "function",
            "function": {"name": c["name"], "arguments": c.get("arguments", {})},
        }
        for j, c in enumerate(calls)
    ]


def chat_kwargs(body: ChatCompletionRequest, api_mode: str = "openai") -> dict[str, Any]:
    """build_request(**kwargs) for a chat completion."""
    function_call = (body.model_extra or {}).get("function_call")
    if function_call not in _TOOL_CHOICES:
        raise unsupported("function_call", "only 'none' and 'auto' are supported.")
    _warn_unknown(body, "chat.completions")
    kw = _sampling_kwargs(body)
    if body.max_completion_tokens is not None:
        kw["max_completion_tokens"] = body.max_completion_tokens
    if body.logprobs is not None:
        kw["logprobs"] = body.logprobs
    if body.top_logprobs is not None:
        kw["top_logprobs"] = body.top_logprobs
    kw["messages"] = [m.model_dump(exclude_unset=True) for m in body.messages]
    kw["tools"] = body.tools  # tool_choice "none" hides them from the model (build_request)
    if body.tool_choice is not None:
        kw["tool_choice"] = body.tool_choice
    if body.parallel_tool_calls is not None:
        kw["parallel_tool_calls"] = body.parallel_tool_calls
    if body.response_format is not None:
        kw["response_format"] = body.response_format
    if body.chat_template_kwargs:
        kw["template_kwargs"] = body.chat_template_kwargs
    return llamafactory_fields(kw) if api_mode == "llamafactory" else kw


def completion_kwargs(body: CompletionRequest, api_mode: str = "openai") -> list[dict[str, Any]]:
    """build_request(**kwargs) for each prompt of a completion request."""
    if body.echo:
        raise unsupported("echo", "echoing the prompt is not supported.")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise unsupported("best_of", "best_of must equal n (ranking extra candidates is not supported).")
    if body.suffix:
        raise unsupported("suffix", "insertion (suffix) is not supported.")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise InvalidRequestError("prompt: must be a string or a non-empty list of strings.", param="prompt")
    _warn_unknown(body, "completions")
    kw = _sampling_kwargs(body)
    if body.logprobs is not None:
        kw["logprobs"] = body.logprobs
    if api_mode == "llamafactory":
        kw = llamafactory_fields(kw)
    return [{**kw, "prompt": p} for p in prompts]
