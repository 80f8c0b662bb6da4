"""Chat formatting: which Jinja template renders a conversation, its stop words, and the parsers for its replies.

The tokenizer's own chat template is the default. `template: NAME` picks a built-in one (`builtin/NAME.jinja`,
listed in `registry.py`), and `chat_template` takes a Jinja file or string. Rendering goes through the
tokenizer's `apply_chat_template` so every template sees the same variables (bos_token, eos_token, tools,
add_generation_prompt, strftime_now...). `ChatTemplate.tool_parser` / `.reasoning_parser` name the parsers
(`tool_parsers.get_tool_parser`, `reasoning.get_reasoning_parser`) that split this format's replies.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from chatplex.errors import ConfigError, InvalidRequestError
from chatplex.templates.detect import detect_reasoning_parser, detect_tool_parser
from chatplex.templates.registry import ALIASES, BY_NAME, FAMILIES
from chatplex.templates.tool_prompt import renders_tools, with_tool_prompt

logger = logging.getLogger(__name__)

# Built-in template name -> stop strings its format ends turns with (besides the tokenizer's EOS).
BUILTIN_STOP_WORDS: dict[str, tuple[str, ...]] = {f.name: f.stop_words for f in FAMILIES}


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the stop words of its format and the parsers for its replies."""

    name: str
    source: str | None  # None: the tokenizer's own template
    stop_words: tuple[str, ...] = ()
    tool_parser: str | None = None  # a key of tool_parsers.TOOL_PARSERS
    reasoning_parser: str | None = None  # a key of reasoning.REASONING_PARSERS
    # How a request's tools reach the model: "template" (it renders them), "generic" (it does not, and chatplex's
    # tool prompt is added: templates.tool_prompt), "ignored" (it does not, and generic_tool_prompt is off or the
    # family's own call format is not Hermes).
    tools: str = "template"


def builtin_names() -> list[str]:
    return sorted(BY_NAME)


def load_builtin(name: str) -> ChatTemplate:
    key = ALIASES.get(name, name)
    if key not in BY_NAME:
        raise ConfigError(
            f"template: {name!r} is not a built-in template; choose one of {', '.join(builtin_names())}, "
            "or pass chat_template with a Jinja file.",
            param="template",
        )
    family = BY_NAME[key]
    source = resources.files("chatplex.templates").joinpath("builtin", f"{key}.jinja").read_text(encoding="utf-8")
    return ChatTemplate(key, source, family.stop_words, family.tool_parser, family.reasoning_parser)


def _detected(name: str, source: str | None, detect_from: str | None = None) -> ChatTemplate:
    text = detect_from if detect_from is not None else source
    return ChatTemplate(name, source, (), detect_tool_parser(text), detect_reasoning_parser(text))


def resolve_template(
    template: str | None, chat_template: str | None, tokenizer: Any, *, generic_tool_prompt: bool = True
) -> ChatTemplate:
    """Pick the template a model renders with (a named built-in, a Jinja file/string, or the tokenizer's own), and
    find out whether it shows the model a request's tools."""
    chosen = _choose(template, chat_template, tokenizer)

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        return str(tokenizer.apply_chat_template(messages, tools=tools, chat_template=chosen.source, tokenize=False,
                                                 add_generation_prompt=True))

    if renders_tools(render):
        return chosen
    if chosen.tool_parser not in (None, "hermes"):
        # The family has its own call format (DeepSeek-V3.1's template leaves tools to the system message): a Hermes
        # prompt would teach the model a format its parser does not read.
        logger.warning("The %s chat template does not render tools and its tool-call format (%s) has no generic "
                       "prompt: describe the tools in the system message.", chosen.name, chosen.tool_parser)
        return replace(chosen, tools="ignored")
    if not generic_tool_prompt:
        logger.warning("The %s chat template does not render tools, and generic_tool_prompt is off: requests' tools "
                       "will not reach the model.", chosen.name)
        return replace(chosen, tools="ignored")
    logger.warning("The %s chat template does not render tools: requests with tools get chatplex's generic tool "
                   "prompt (Hermes format; generic_tool_prompt: false turns it off).", chosen.name)
    return replace(chosen, tools="generic", tool_parser="hermes")


def _choose(template: str | None, chat_template: str | None, tokenizer: Any) -> ChatTemplate:
    if template:
        return load_builtin(template)
    if chat_template:
        if os.path.isfile(chat_template):
            with open(chat_template, encoding="utf-8") as f:
                return _detected(os.path.basename(chat_template), f.read())
        if "{{" in chat_template or "{%" in chat_template:
            return _detected("inline", chat_template)
        raise ConfigError(f"chat_template: {chat_template!r} is neither a file nor a Jinja template.", param="chat_template")
    own = getattr(tokenizer, "chat_template", None)
    if own:
        # Some tokenizers keep several named templates (a dict); the parsers are read from all of them.
        text = own if isinstance(own, str) else "\n".join(map(str, dict(own).values()))
        return _detected("tokenizer", None, text)
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
    if tools and template.tools == "generic":
        messages, tools = with_tool_prompt(messages, tools), None
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


__all__ = [
    "BUILTIN_STOP_WORDS",
    "ChatTemplate",
    "builtin_names",
    "load_builtin",
    "render_prompt",
    "resolve_template",
]
