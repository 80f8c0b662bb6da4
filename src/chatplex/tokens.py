"""Tokenize and detokenize with the served model's own tokenizer (vLLM's /tokenize and /detokenize).

A prompt is encoded as a completion request encodes it; messages are rendered with the chat template exactly as
a chat request is (same template, tools, default system and template kwargs), so the count is the prompt length
that request would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from chatplex.messages import normalize_messages
from chatplex.templates import render_prompt

if TYPE_CHECKING:
    from chatplex.chat_model import ChatModel
    from chatplex.types import Message


def check_token_list(tokens: Any, vocab_size: int | None, param: str = "tokens") -> None:
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise InvalidRequestError(f"{param}: must be a list of token ids.", param=param)
    bad = [t for t in tokens if t < 0 or (vocab_size is not None and t >= vocab_size)]
    if bad:
        raise InvalidRequestError(
            f"{param}: token id {bad[0]} is outside the vocabulary ({vocab_size} tokens).", param=param
        )


def token_ids(
    model: ChatModel,
    prompt: str | None,
    messages: list[Message] | None,
    add_special_tokens: bool | None,
    add_generation_prompt: bool,
    tools: Any,
    template_kwargs: dict[str, Any] | None,
) -> list[int]:
    """The ids `ChatModel.tokenize` returns (see there)."""
    tokenizer = model.engine.local_tokenizer
    if (prompt is None) == (messages is None):
        raise InvalidRequestError("Give either prompt or messages.", param="prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise InvalidRequestError("prompt: must be a string.", param="prompt")
        return list(tokenizer.encode(prompt, add_special_tokens=add_special_tokens is not False))
    prompts = getattr(model.engine, "prompts", None)
    if prompts is None:
        raise UnsupportedFeatureError(f"{model.model_name} has no chat template to render messages.", param="messages")
    if add_generation_prompt and not add_special_tokens:
        request = model.build_request(messages, tools=tools, template_kwargs=template_kwargs)
        return list(prompts.message_ids(request.messages, request))
    # A conversation as it stands (no generation prompt; it may end with the assistant) or with a BOS on top.
    norm = normalize_messages(messages, default_system=model.args.model.default_system, require_reply=False)
    text = render_prompt(
        tokenizer,
        prompts.template,
        norm,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        template_kwargs=template_kwargs,
    )
    return list(tokenizer.encode(text, add_special_tokens=bool(add_special_tokens)))
