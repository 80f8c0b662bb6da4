"""Chat formatting: which Jinja template renders a conversation, and the stop words that go with it.

The tokenizer's own chat template is the default. `template: NAME` picks a built-in one (`builtin/NAME.jinja`),
and `chat_template` takes a Jinja file or string. Rendering goes through the tokenizer's `apply_chat_template`
so every template sees the same variables (bos_token, eos_token, tools, add_generation_prompt...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

from chatplex.errors import ConfigError, InvalidRequestError

# Built-in template name -> stop strings its format ends turns with (besides the tokenizer's EOS).
BUILTIN_STOP_WORDS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_end|>",),
    "llama2": (),
    "llama3": ("<|eot_id|>", "<|eom_id|>"),
    "default": (),
}
ALIASES = {"llama3.1": "llama3", "llama3.2": "llama3", "llama3.3": "llama3", "qwen": "chatml"}


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the stop words of its format."""

    name: str
    source: str | None  # None: the tokenizer's own template
    stop_words: tuple[str, ...] = ()


def builtin_names() -> list[str]:
    return sorted(BUILTIN_STOP_WORDS)


def load_builtin(name: str) -> ChatTemplate:
    key = ALIASES.get(name, name)
    if key not in BUILTIN_STOP_WORDS:
        raise ConfigError(
            f"template: {name!r} is not a built-in template; choose one of {', '.join(builtin_names())}, "
            "or pass chat_template with a Jinja file.",
            param="template",
        )
    source = resources.files("chatplex.templates").joinpath("builtin", f"{key}.jinja").read_text(encoding="utf-8")
    return ChatTemplate(name=key, source=source, stop_words=BUILTIN_STOP_WORDS[key])


def resolve_template(template: str | None, chat_template: str | None, tokenizer: Any) -> ChatTemplate:
    """Pick the template a model renders with: a named built-in, a Jinja file/string, or the tokenizer's own."""
    if template:
        return load_builtin(template)
    if chat_template:
        if os.path.isfile(chat_template):
            with open(chat_template, encoding="utf-8") as f:
                return ChatTemplate(name=os.path.basename(chat_template), source=f.read())
        if "{{" in chat_template or "{%" in chat_template:
            return ChatTemplate(name="inline", source=chat_template)
        raise ConfigError(f"chat_template: {chat_template!r} is neither a file nor a Jinja template.", param="chat_template")
    if getattr(tokenizer, "chat_template", None):
        return ChatTemplate(name="tokenizer", source=None)
    # No template anywhere: LLaMA-Factory falls back to its "default" format too.
    return load_builtin("default")


def render_prompt(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """Render a normalised conversation to the prompt text the model continues."""
    try:
        return tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=template.source,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **(template_kwargs or {}),
        )
    except Exception as e:  # jinja2's TemplateError and the template's own raise_exception
        raise InvalidRequestError(
            f"messages: the {template.name} chat template cannot render this conversation: {e}", param="messages"
        ) from e
