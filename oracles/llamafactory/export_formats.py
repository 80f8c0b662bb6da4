"""Export LLaMA-Factory's registered chat formats as data, for chatplex's `template: NAME`.

Runs in LLaMA-Factory's own environment (`make lf-goldens` makes it: requirements/lf.txt). Reads the registry
`llamafactory.data.template.TEMPLATES` and the tool prompts of `llamafactory.data.tool_utils`, and writes them as
JSON: each name's slots (strings, {"token": X}, {"special": "bos_token"|"eos_token"}), default system, stop words,
thought and tool-call words, flags, the template's encoding rule and its multimodal plugin's tokens. chatplex's own
code (src/chatplex/templates/llamafactory/) gives these formats their meaning; goldens rendered by LLaMA-Factory
itself (render_goldens.py) check that it gives the same tokens.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

from llamafactory.data import template as lf_template
from llamafactory.data import tool_utils

ENCODINGS = {  # LLaMA-Factory's Template subclasses, by the encoding rule each one changes
    "Template": "plain",
    "Llama2Template": "system_in_first_user",
    "ReasoningTemplate": "reasoning",
    "Glm47ReasoningTemplate": "reasoning_close_only",
    "MossVLTemplate": "bare_tools",  # LLaMA-Factory's HEAD: tool text without a system loses its leading newlines
}


def slots(formatter) -> list:
    out = []
    for slot in formatter.slots:
        if isinstance(slot, str):
            out.append(slot)
        elif isinstance(slot, dict):
            out.append({"token": slot["token"]})
        elif isinstance(slot, set):
            (name,) = tuple(slot)
            out.append({"special": name})
        else:
            raise TypeError(f"unexpected slot {slot!r}")
    return out


def tool_format(formatter, expected: str) -> str:
    if type(formatter).__name__ != expected:
        raise TypeError(f"{formatter!r} is not a {expected}")
    return formatter.tool_format


def tools(formatter) -> dict:
    """A ToolFormatter describes tools in its tool format; a StringFormatter puts the tools' JSON in its slots."""
    if type(formatter).__name__ == "ToolFormatter":
        return {"tool_format": formatter.tool_format}
    if type(formatter).__name__ == "StringFormatter":
        return {"slots": slots(formatter)}
    raise TypeError(f"unexpected tools formatter {formatter!r}")


def export(name: str, t) -> dict:
    for part in (t.format_prefix, t.format_system, t.format_user, t.format_assistant, t.format_observation):
        if type(part).__name__ not in ("StringFormatter", "EmptyFormatter"):
            raise TypeError(f"{name}: unexpected formatter {part!r}")
    plugin = t.mm_plugin
    return {
        "encoding": ENCODINGS[type(t).__name__],
        "prefix": slots(t.format_prefix),
        "system": slots(t.format_system),
        "user": slots(t.format_user),
        "assistant": slots(t.format_assistant),
        "observation": slots(t.format_observation),
        "function": slots(t.format_function),
        "function_tool_format": tool_format(t.format_function, "FunctionFormatter"),
        "tools": tools(t.format_tools),
        "default_system": t.default_system,
        "stop_words": list(t.stop_words),
        "thought_words": list(t.thought_words),
        "tool_call_words": list(t.tool_call_words),
        "efficient_eos": t.efficient_eos,
        "replace_eos": t.replace_eos,
        "replace_jinja_template": t.replace_jinja_template,
        "enable_thinking": t.enable_thinking,
        "preserve_thinking": t.preserve_thinking,
        # the plugin's class and its token attributes (image_token, vision_bos_token...)
        "mm_plugin": {"plugin": type(plugin).__name__,
                      **{k: v for k, v in sorted(vars(plugin).items()) if k.endswith("_token") and v is not None}},
    }


def main(out: Path, source: str | None) -> None:
    prompts = {k: v for k, v in vars(tool_utils).items() if k.endswith("_TOOL_PROMPT") and isinstance(v, str)}
    data = {
        "source": {
            "package": "llamafactory",
            "version": source or version("llamafactory"),
            "module": "llamafactory/data/template.py, llamafactory/data/tool_utils.py",
            "licence": "Apache-2.0",
        },
        "tool_prompts": prompts,
        "templates": {name: export(name, t) for name, t in sorted(lf_template.TEMPLATES.items())},
    }
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(data['templates'])} formats, {len(prompts)} tool prompts -> {out}")


if __name__ == "__main__":
    # argv[2]: what the code is when it is not the installed release (a source tree on PYTHONPATH: `make lf-goldens
    # LF_SRC=... LF_SRC_DESC=...`)
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
