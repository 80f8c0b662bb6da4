"""LLaMA-Factory's tool formats (`tool_format`): how a format describes tools to the model and writes its calls.

Each format has two halves: `describe(tools)` makes the text that goes after the system prompt, and
`write_calls(calls)` makes an assistant turn's tool calls as the model was trained to write them. The prompt
texts come from LLaMA-Factory with the formats (formats.json, `tool_prompts`); the goldens in
tests/fixtures/llamafactory/ check both halves against LLaMA-Factory's own output for every format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from chatplex.errors import InvalidRequestError

Call = tuple[str, str]  # (name, arguments as JSON text), as LLaMA-Factory's FunctionCall


def today() -> str:
    """The date the Llama 3 tool prompt states (its model card's format); a function so tests can fix it."""
    return datetime.now().strftime("%d %b %Y")


def _function(tool: dict[str, Any]) -> Any:
    """The function definition of an OpenAI-style tool, or the tool itself when it is already one."""
    return tool.get("function", "") if tool.get("type") == "function" else tool


def _function_or_self(tool: dict[str, Any]) -> Any:
    return tool.get("function", tool) if tool.get("type") == "function" else tool


def _wrapped(tool: dict[str, Any]) -> dict[str, Any]:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, ensure_ascii=False, **kwargs)


def _text_value(value: Any) -> str:
    """XML-style formats write a string argument as it is and anything else as JSON."""
    return value if isinstance(value, str) else _dumps(value)


class ToolFormat:
    """One `tool_format`; subclasses fill in the two halves."""

    def __init__(self, prompts: dict[str, str]) -> None:
        self.prompts = prompts

    def describe(self, tools: list[dict[str, Any]]) -> str:
        raise NotImplementedError

    def write_calls(self, calls: list[Call]) -> str:
        raise NotImplementedError


class DefaultFormat(ToolFormat):
    """ReAct-style `Action: name` / `Action Input: {json}`, with the tools listed as bullet points."""

    def describe(self, tools: list[dict[str, Any]]) -> str:
        text, names = "", []
        for tool in map(_function, tools):
            params = ""
            for name, param in tool["parameters"]["properties"].items():
                required = ", required" if name in tool["parameters"].get("required", []) else ""
                enum = ", should be one of [{}]".format(", ".join(param["enum"])) if param.get("enum") else ""
                items = f", where each item should be {param['items'].get('type', '')}" if param.get("items") else ""
                params += (
                    f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}{enum}{items}\n"
                )
            text += (
                f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{params}\n"
            )
            names.append(tool["name"])
        return self.prompts["DEFAULT_TOOL_PROMPT"].format(tool_text=text, tool_names=", ".join(names))

    def write_calls(self, calls: list[Call]) -> str:
        return "\n".join(f"Action: {name}\nAction Input: {arguments}" for name, arguments in calls)


class Glm4Format(ToolFormat):
    def describe(self, tools: list[dict[str, Any]]) -> str:
        text = ""
        for tool in map(_function, tools):
            body = _dumps(tool, indent=4)
            text += f"\n\n## {tool['name']}\n\n{body}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
        return self.prompts["GLM4_TOOL_PROMPT"].format(tool_text=text)

    def write_calls(self, calls: list[Call]) -> str:
        if len(calls) > 1:
            raise InvalidRequestError("messages: GLM-4's tool format takes one tool call per turn.", param="messages")
        return f"{calls[0][0]}\n{calls[0][1]}"


class Llama3Format(ToolFormat):
    def describe(self, tools: list[dict[str, Any]]) -> str:
        text = "".join(_dumps(_wrapped(tool), indent=4) + "\n\n" for tool in tools)
        return self.prompts["LLAMA3_TOOL_PROMPT"].format(date=today(), tool_text=text)

    def write_calls(self, calls: list[Call]) -> str:
        objects = [{"name": name, "parameters": json.loads(arguments)} for name, arguments in calls]
        return _dumps(objects[0] if len(objects) == 1 else objects)


class MistralFormat(ToolFormat):
    def describe(self, tools: list[dict[str, Any]]) -> str:
        return "[AVAILABLE_TOOLS] " + _dumps([_wrapped(tool) for tool in tools]) + "[/AVAILABLE_TOOLS]"

    def write_calls(self, calls: list[Call]) -> str:
        return _dumps([{"name": name, "arguments": json.loads(arguments)} for name, arguments in calls])


class QwenFormat(ToolFormat):
    """Hermes-style `<tool_call>{json}</tool_call>`; Ling and GLM-4.5 describe tools with their own prompts."""

    prompt = "QWEN_TOOL_PROMPT"

    def describe(self, tools: list[dict[str, Any]]) -> str:
        text = "".join("\n" + _dumps(_wrapped(tool)) for tool in tools)
        return self.prompts[self.prompt].format(tool_text=text)

    def write_calls(self, calls: list[Call]) -> str:
        texts = [_dumps({"name": name, "arguments": json.loads(arguments)}) for name, arguments in calls]
        return "\n".join(f"<tool_call>\n{text}\n</tool_call>" for text in texts)


class LingFormat(QwenFormat):
    prompt = "LING_TOOL_PROMPT"

    def describe(self, tools: list[dict[str, Any]]) -> str:
        return super().describe(tools) + "\n" + "detailed thinking off"


class Glm4MoeFormat(QwenFormat):
    prompt = "GLM4_MOE_TOOL_PROMPT"

    def write_calls(self, calls: list[Call]) -> str:
        texts = []
        for name, arguments in calls:
            text = "\n<tool_call>" + name
            for key, value in json.loads(arguments).items():
                text += f"\n<arg_key>{key}</arg_key>\n<arg_value>{_text_value(value)}</arg_value>"
            texts.append(text)
        return "\n".join(texts)


class Qwen35Format(ToolFormat):
    def describe(self, tools: list[dict[str, Any]]) -> str:
        text = "".join("\n" + _dumps(_function_or_self(tool)) for tool in tools)
        return self.prompts["QWEN35_TOOL_PROMPT"].format(tool_text=text)

    def write_calls(self, calls: list[Call]) -> str:
        texts = []
        for name, arguments in calls:
            text = f"<tool_call>\n<function={name}>"
            for key, value in json.loads(arguments).items():
                text += f"\n<parameter={key}>\n{_text_value(value)}\n</parameter>"
            texts.append(text + "\n</function>\n</tool_call>")
        return "\n".join(texts)


class SeedOssFormat(ToolFormat):
    def describe(self, tools: list[dict[str, Any]]) -> str:
        return self.prompts["SEED_TOOL_PROMPT"].format(tool_text="\n" + _dumps(tools))

    def write_calls(self, calls: list[Call]) -> str:
        texts = []
        for name, arguments in calls:
            text = "\n<seed:tool_call>\n<function=" + name
            for key, value in json.loads(arguments).items():
                text += f"\n<parameter={key}>{_text_value(value)}</parameter>"
            texts.append(text + "\n</function>\n</seed:tool_call>")
        return "\n".join(texts)


class MiniMax1Format(ToolFormat):
    def describe(self, tools: list[dict[str, Any]]) -> str:
        text = "".join(_dumps(_function(tool)) + "\n" for tool in tools)
        return self.prompts["MINIMAX_M1_TOOL_PROMPT"].format(tool_text=text)

    def write_calls(self, calls: list[Call]) -> str:
        texts = [_dumps({"name": name, "arguments": json.loads(arguments)}) for name, arguments in calls]
        return "<tool_calls>\n" + "\n".join(texts) + "\n</tool_calls>"


class MiniMax2Format(ToolFormat):
    def describe(self, tools: list[dict[str, Any]]) -> str:
        text = "".join("<tool>" + _dumps(_function(tool)) + "</tool>\n" for tool in tools)
        return self.prompts["MINIMAX_M2_TOOL_PROMPT"].format(tool_text=text)

    def write_calls(self, calls: list[Call]) -> str:
        texts = []
        for name, arguments in calls:
            text = f'<invoke name="{name}">'
            for key, value in json.loads(arguments).items():
                text += f'\n<parameter name="{key}">{_text_value(value)}</parameter>'
            texts.append(text + "\n</invoke>")
        return "\n".join(texts)


class Lfm2Format(ToolFormat):
    def describe(self, tools: list[dict[str, Any]]) -> str:
        return self.prompts["LFM2_TOOL_PROMPT"].format(tool_text=_dumps([_function_or_self(tool) for tool in tools]))

    def write_calls(self, calls: list[Call]) -> str:
        texts = []
        for name, arguments in calls:
            kwargs = [
                f'{key}="{value}"' if isinstance(value, str) else f"{key}={_dumps(value)}"
                for key, value in json.loads(arguments).items()
            ]
            texts.append(f"{name}({', '.join(kwargs)})")
        return f"<|tool_call_start|>[{', '.join(texts)}]<|tool_call_end|>"


class Gemma4Format(ToolFormat):
    """Gemma 4's declarations and `<|tool_call>call:name{k:v}<tool_call|>` calls, strings quoted by `<|"|>`."""

    Q = '<|"|>'

    def _params(self, properties: dict[str, Any]) -> str:
        parts = []
        for name, schema in properties.items():
            items = []
            if schema.get("description"):
                items.append(f"description:{self.Q}{schema['description']}{self.Q}")
            if schema.get("type"):
                items.append(f"type:{self.Q}{str(schema['type']).upper()}{self.Q}")
            parts.append(f"{name}:{{{','.join(items)}}}")
        return ",".join(parts)

    def describe(self, tools: list[dict[str, Any]]) -> str:
        q, declarations = self.Q, []
        for tool in tools:
            fn = _function_or_self(tool)
            text = f"declaration:{fn['name']}{{description:{q}{fn.get('description', '')}{q}"
            params = fn.get("parameters")
            if params:
                parts = []
                if params.get("properties"):
                    parts.append(f"properties:{{{self._params(params['properties'])}}}")
                if params.get("required"):
                    parts.append("required:[" + ",".join(f"{q}{item}{q}" for item in params["required"]) + "]")
                if params.get("type"):
                    parts.append(f"type:{q}{str(params['type']).upper()}{q}")
                text += f",parameters:{{{','.join(parts)}}}"
            response = fn.get("response")
            if response:
                parts = []
                if response.get("description"):
                    parts.append(f"description:{q}{response['description']}{q}")
                if str(response.get("type", "")).upper() == "OBJECT":
                    parts.append(f"type:{q}OBJECT{q}")
                text += f",response:{{{','.join(parts)}}}"
            declarations.append(text + "}")
        return "\n".join(declarations)

    def _value(self, value: Any, quote_keys: bool = True) -> str:
        if isinstance(value, str):
            return f"{self.Q}{value}{self.Q}"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict):
            items = []
            for k in sorted(value):
                key = f"{self.Q}{k}{self.Q}" if quote_keys else str(k)
                items.append(f"{key}:{self._value(value[k], quote_keys)}")
            return "{" + ",".join(items) + "}"
        if isinstance(value, list | tuple):
            return "[" + ",".join(self._value(item, quote_keys) for item in value) + "]"
        if value is None:
            return "null"
        return str(value)

    def write_calls(self, calls: list[Call]) -> str:
        texts = []
        for name, arguments in calls:
            try:
                parsed = json.loads(arguments)
            except (TypeError, json.JSONDecodeError):
                parsed = arguments
            if isinstance(parsed, dict):
                body = ",".join(f"{key}:{self._value(parsed[key], quote_keys=False)}" for key in sorted(parsed))
            elif isinstance(parsed, str):
                body = parsed
            else:
                body = self._value(parsed, quote_keys=False)
            texts.append(f"<|tool_call>call:{name}{{{body}}}<tool_call|>")
        return "".join(texts)


FORMATS: dict[str, Callable[[dict[str, str]], ToolFormat]] = {
    "default": DefaultFormat,
    "gemma4": Gemma4Format,
    "glm4": Glm4Format,
    "glm4_moe": Glm4MoeFormat,
    "lfm2": Lfm2Format,
    "ling": LingFormat,
    "llama3": Llama3Format,
    "minimax1": MiniMax1Format,
    "minimax2": MiniMax2Format,
    "mistral": MistralFormat,
    "qwen": QwenFormat,
    "qwen3_5": Qwen35Format,
    "seed_oss": SeedOssFormat,
}
