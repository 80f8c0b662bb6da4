"""Chat formatting: which Jinja template renders a conversation, its stop words, and the parsers for its replies.

The tokenizer's own chat template is the default. `template: NAME` picks LLaMA-Factory's format of that name
(`llamafactory/`: all of its registered names, encoded token for token as LLaMA-Factory encodes them, since a
fine-tune learnt exactly that), or else one of chatplex's Jinja built-ins (`builtin/NAME.jinja`, listed in
`registry.py`: models' own templates under names LLaMA-Factory does not use); `chat_template` takes a Jinja file or
string. Jinja templates render through the tokenizer's `apply_chat_template` so every template sees the same
variables (bos_token, eos_token, tools, add_generation_prompt, strftime_now...). `ChatTemplate.tool_parser` /
`.reasoning_parser` name the parsers (`tool_parsers.get_tool_parser`, `reasoning.get_reasoning_parser`) that split
this format's replies."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from chatplex.errors import ConfigError, InvalidRequestError
from chatplex.templates import llamafactory
from chatplex.templates.detect import detect_reasoning_parser, detect_tool_parser
from chatplex.templates.llamafactory import LFFormat
from chatplex.templates.llamafactory.conversation import to_turns
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
    lf: LFFormat | None = None  # a LLaMA-Factory format: encoded by its rules, not rendered by Jinja


# LLaMA-Factory tool format -> the parser that reads replies written in it (tests: every format's calls, as its
# own writer writes them, read back: tests/templates/test_tool_parsers.py).
LF_TOOL_PARSERS = {
    "default": "react",
    "qwen": "hermes",
    "ling": "hermes",
    "glm4_moe": "glm4",
    "llama3": "llama3_json",
    "mistral": "mistral",
    "qwen3_5": "qwen3_coder",
    "glm4": "chatglm",
    "minimax1": "minimax1",
    "minimax2": "minimax2",
    "seed_oss": "seed_oss",
    "lfm2": "lfm2",
    "gemma4": "gemma4",
}


def builtin_names() -> list[str]:
    """Chatplex's own Jinja built-ins (LLaMA-Factory's names are `llamafactory.names()`)."""
    return sorted(BY_NAME)


def check_template_name(name: str) -> None:
    """Fail fast (before any weights load) on a name that is neither LLaMA-Factory's nor a built-in."""
    if llamafactory.is_name(name) or ALIASES.get(name, name) in BY_NAME:
        return
    valid = [*llamafactory.names(), *builtin_names(), *ALIASES]
    near = llamafactory.closest(name, valid)
    hint = f" Closest: {', '.join(near)}." if near else ""
    raise ConfigError(
        f"template: {name!r} is not a template name.{hint} `chatplex templates` lists all "
        f"{len(llamafactory.names())} LLaMA-Factory names and chatplex's built-ins; or pass chat_template with a "
        "Jinja file.",
        param="template",
    )


def load_llamafactory(
    name: str, *, tool_format: str | None = None, enable_thinking: bool | None = None, preserve_thinking: bool = False
) -> ChatTemplate:
    try:
        fmt = llamafactory.load(name).configured(
            tool_format=tool_format,
            enable_thinking=True if enable_thinking is None else enable_thinking,
            preserve_thinking=preserve_thinking,
            formats=llamafactory.all_tool_formats(),
        )
    except KeyError:
        choices = ", ".join(sorted(llamafactory.all_tool_formats()))
        raise ConfigError(
            f"tool_format: {tool_format!r} is not a LLaMA-Factory tool format; choose one of {choices}.",
            param="tool_format",
        ) from None
    reasoning = "think" if fmt.reasoning and "<think>" in fmt.thought_words[0] + fmt.thought_words[1] else None
    return ChatTemplate(name, None, fmt.stop_words, LF_TOOL_PARSERS.get(fmt.tool_format), reasoning, "template", fmt)


def load_builtin(name: str) -> ChatTemplate:
    if llamafactory.is_name(name):
        return load_llamafactory(name)
    key = ALIASES.get(name, name)
    if key not in BY_NAME:
        check_template_name(name)
    family = BY_NAME[key]
    source = resources.files("chatplex.templates").joinpath("builtin", f"{key}.jinja").read_text(encoding="utf-8")
    return ChatTemplate(key, source, family.stop_words, family.tool_parser, family.reasoning_parser)


def _detected(name: str, source: str | None, detect_from: str | None = None) -> ChatTemplate:
    text = detect_from if detect_from is not None else source
    return ChatTemplate(name, source, (), detect_tool_parser(text), detect_reasoning_parser(text))


def resolve_template(
    template: str | None,
    chat_template: str | None,
    tokenizer: Any,
    *,
    generic_tool_prompt: bool = True,
    tool_format: str | None = None,
    enable_thinking: bool | None = None,
    preserve_thinking: bool = False,
) -> ChatTemplate:
    """Pick the template a model renders with (a LLaMA-Factory format, a named built-in, a Jinja file/string, or
    the tokenizer's own), and find out whether it shows the model a request's tools. A LLaMA-Factory format also
    sets the tokenizer's EOS and stop words as LLaMA-Factory does (`LFFormat.fix_tokenizer`)."""
    if llamafactory.is_name(template):
        chosen = load_llamafactory(
            template, tool_format=tool_format, enable_thinking=enable_thinking, preserve_thinking=preserve_thinking
        )
        assert chosen.lf is not None
        added = chosen.lf.fix_tokenizer(tokenizer)
        if added:
            logger.warning(
                "The %s template's tokens %s are not in the model's vocabulary; added as new tokens, "
                "which the model cannot write (LLaMA-Factory's resize_vocab trains them).",
                template,
                ", ".join(added),
            )
        return chosen
    if tool_format is not None:
        raise ConfigError(
            "tool_format: applies to LLaMA-Factory's template names only; this model renders with "
            f"{template or chat_template or 'its tokenizer'}'s own template.",
            param="tool_format",
        )
    chosen = _choose(template, chat_template, tokenizer)

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        return str(
            tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=chosen.source, tokenize=False, add_generation_prompt=True
            )
        )

    if renders_tools(render):
        return chosen
    if chosen.tool_parser not in (None, "hermes"):
        # The family has its own call format (DeepSeek-V3.1's template leaves tools to the system message): a Hermes
        # prompt would teach the model a format its parser does not read.
        logger.warning(
            "The %s chat template does not render tools and its tool-call format (%s) has no generic "
            "prompt: describe the tools in the system message.",
            chosen.name,
            chosen.tool_parser,
        )
        return replace(chosen, tools="ignored")
    if not generic_tool_prompt:
        logger.warning(
            "The %s chat template does not render tools, and generic_tool_prompt is off: requests' tools "
            "will not reach the model.",
            chosen.name,
        )
        return replace(chosen, tools="ignored")
    logger.warning(
        "The %s chat template does not render tools: requests with tools get chatplex's generic tool "
        "prompt (Hermes format; generic_tool_prompt: false turns it off).",
        chosen.name,
    )
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
        raise ConfigError(
            f"chat_template: {chat_template!r} is neither a file nor a Jinja template.", param="chat_template"
        )
    own = getattr(tokenizer, "chat_template", None)
    if own:
        # Some tokenizers keep several named templates (a dict); the parsers are read from all of them.
        text = own if isinstance(own, str) else "\n".join(map(str, dict(own).values()))
        return _detected("tokenizer", None, text)
    # No template anywhere: LLaMA-Factory falls back to its "empty" format (the text as it is).
    return load_builtin("empty")


def render_prompt(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    template_kwargs: dict[str, Any] | None = None,
    piece_separator: str = "",
) -> str:
    """Render a normalised conversation to the prompt text the model continues (or, without the generation
    prompt, the whole conversation). A LLaMA-Factory format's pieces are joined by `piece_separator`, for
    callers that encode them one by one afterwards (multimodal families)."""
    if template.lf is not None:
        turns, system, lf_tools = to_turns(
            messages,
            tools,
            template=template.name,
            add_generation_prompt=add_generation_prompt,
            media=template.lf.media,
        )
        thinking = (template_kwargs or {}).get("enable_thinking")
        if add_generation_prompt:
            return template.lf.prompt_text(
                tokenizer, turns, system, lf_tools, enable_thinking=thinking, separator=piece_separator
            )
        prompt, reply = template.lf.encode_oneturn(
            tokenizer, turns, system, lf_tools, enable_thinking=thinking, text=True, separator=piece_separator
        )
        return piece_separator.join(p for p in (str(prompt), str(reply)) if p)
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


def prompt_token_ids(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> list[int] | None:
    """The prompt ids of a LLaMA-Factory format, encoded piece by piece as LLaMA-Factory does (None for Jinja
    templates, whose text is tokenized whole)."""
    if template.lf is None:
        return None
    turns, system, lf_tools = to_turns(messages, tools, template=template.name, media=template.lf.media)
    thinking = (template_kwargs or {}).get("enable_thinking")
    return template.lf.prompt_ids(tokenizer, turns, system, lf_tools, enable_thinking=thinking)


__all__ = [
    "BUILTIN_STOP_WORDS",
    "ChatTemplate",
    "builtin_names",
    "check_template_name",
    "load_builtin",
    "prompt_token_ids",
    "render_prompt",
    "resolve_template",
]
