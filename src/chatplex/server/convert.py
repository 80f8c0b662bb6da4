"""OpenAI request bodies -> `ChatModel.build_request` arguments.

Fields that would silently change results if ignored (legacy `function_call` forcing, echo, suffix, best_of...)
are rejected as unsupported; other unknown fields are ignored with one logged warning per request.
`response_format` and `tool_choice` pass through to `ChatModel.build_request`, which enforces them by
constrained decoding (or raises `UnsupportedFeatureError` naming the field on engines that cannot).
"""

from __future__ import annotations

import logging
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.server.errors import unsupported
from chatplex.server.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

logger = logging.getLogger(__name__)

# request field -> chatplex generation argument (None values are left out so the model's defaults apply)
_SAMPLING_FIELDS = {
    "n": "n", "max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
    "min_p": "min_p", "repetition_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "stop": "stop", "seed": "seed", "logit_bias": "logit_bias",
    "min_tokens": "min_new_tokens", "ignore_eos": "ignore_eos", "stop_token_ids": "stop_token_ids",
    "skip_special_tokens": "skip_special_tokens",
}
_TOOL_CHOICES = (None, "none", "auto")


def _warn_unknown(body: SamplingFields, endpoint: str) -> None:
    extra = sorted(body.model_extra or {})
    if extra:
        logger.warning("%s: ignoring unknown request fields: %s", endpoint, ", ".join(extra))


def _sampling_kwargs(body: SamplingFields) -> dict[str, Any]:
    kw = {name: getattr(body, field) for field, name in _SAMPLING_FIELDS.items()}
    return {k: v for k, v in kw.items() if v is not None}


def chat_kwargs(body: ChatCompletionRequest) -> dict[str, Any]:
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
    return kw


def completion_kwargs(body: CompletionRequest) -> list[dict[str, Any]]:
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
    return [{**kw, "prompt": p} for p in prompts]
