"""Tools for chat templates that do not render them.

Many templates (SmolLM2's own, Llama 2's, most fine-tunes') ignore the `tools` variable: the model would never see
the tools a request sends, while its reply is still parsed for tool calls. `renders_tools` finds that out once, at
load, by rendering a probe tool; for such a template, `with_tool_prompt` writes the tools into the system message
in the Hermes format (the default tool parser's), and turns earlier tool calls and tool results into text the same
format uses, so the conversation still reads as one protocol. `generic_tool_prompt: false` turns this off.

The prompt, documented in the README ("Tools on any template"):

    # Tools

    You can call functions to help with the user's request. Their signatures, one JSON object per line:
    <tools>
    {"type": "function", "function": {...}}
    </tools>

    To call one, answer with a JSON object holding its name and arguments between <tool_call> tags:
    <tool_call>
    {"name": "<function name>", "arguments": {<arguments as a JSON object>}}
    </tool_call>
"""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger(__name__)

PROBE_TOOL_NAME = "chatplex_probe_tool_7e1f"
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": PROBE_TOOL_NAME,
            "description": "probe",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]


def tool_prompt(tools: list[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\nYou can call functions to help with the user's request. Their signatures, one JSON object per "
        f"line:\n<tools>\n{listed}\n</tools>\n\nTo call one, answer with a JSON object holding its name and arguments "
        'between <tool_call> tags:\n<tool_call>\n{"name": "<function name>", "arguments": {<arguments as a JSON '
        "object>}}\n</tool_call>"
    )


def renders_tools(render: Any) -> bool:
    """Whether a template shows the model its tools: `render(messages, tools)` returns the prompt text (or raises,
    which counts as not rendering them)."""
    try:
        return PROBE_TOOL_NAME in render([{"role": "user", "content": "hi"}], _PROBE_TOOLS)
    except Exception:  # noqa: BLE001 - a template that fails on tools does not render them
        return False


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _call_text(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return (
        "<tool_call>\n"
        + json.dumps({"name": fn.get("name"), "arguments": arguments}, ensure_ascii=False)
        + "\n</tool_call>"
    )


def with_tool_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with the tool prompt in its system message (added first, or appended to the one there),
    assistant tool calls as <tool_call> text and tool results as user turns in <tool_response> tags."""
    prompt = tool_prompt(tools)
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(_call_text(call) for call in message["tool_calls"])
            text = _text(message.get("content"))
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        elif role == "tool":
            response = f"<tool_response>\n{_text(message.get('content'))}\n</tool_response>"
            if out and out[-1]["role"] == "user" and str(out[-1].get("content", "")).startswith("<tool_response>"):
                out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{response}"}  # parallel calls' results
            else:
                out.append({"role": "user", "content": response})
        else:
            out.append(message)
    if out and out[0].get("role") == "system":
        system = _text(out[0].get("content"))
        out[0] = {**out[0], "content": f"{system}\n\n{prompt}" if system else prompt}
    else:
        out.insert(0, {"role": "system", "content": prompt})
    return out
