"""Forced calls for the families that write arguments one by one rather than as one JSON object.

- `qwen3_coder`: `<tool_call>\\n<function=NAME>\\n<parameter=K>\\nV\\n</parameter>\\n</function>\\n</tool_call>`
- `glm4`: `<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n</tool_call>`
- `pythonic`: `[NAME(k=V, ...), ...]` (Llama 3.2 / 4, Gemma 3)

Parameters come in schema order, required ones always, optional ones at will; no others. In the XML families a
`"type": "string"` value is bare text (the parser returns it as is), every other value is `%json` of its
subschema (the parser reads it back with `json.loads`). Pythonic values are `%json` too: JSON literals are
Python literals (the parser reads `true`/`false`/`null` as well), so nested objects, enums and required keys are
enforced by the JSON schema itself.

What is not enforced, so a reply may still fail the schema (documented rather than silently wrong):
- XML bare strings: `pattern` and `format` are refused up front (UnsupportedFeatureError); with `maxLength` /
  `minLength` the text may not contain `<` at all (a length and a "no `</`" rule do not combine in one regex),
  without them it may contain `<` but never `</` (that would end the block early for the parser).
- `%json` strings may contain `</parameter>` / `</arg_value>` / `</tool_call>`, which the XML parsers would
  cut at; and JSON's `\\/` escape reads back in Python as a backslash and a slash (pythonic). A model writes
  neither under normal use; the grammar cannot exclude them inside `%json`.
"""

from __future__ import annotations

import json
import keyword
from typing import Any

from chatplex.errors import UnsupportedFeatureError

# Text without `</` (so the parser's non-greedy match ends at our closing tag), then the closing tag itself.
# One regex, closing tag included, so the lexer never has to guess where the value ends.
_NO_CLOSE = r"([^<]|<+[^</])*<*"
_STRING_KEYS = {"type", "description", "title", "maxLength", "minLength", "enum", "const", "default", "examples"}


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def _params(tool: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(name, subschema, required) in schema order; required names missing from `properties` come last."""
    schema = _function(tool).get("parameters") or {}
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    out = [(k, v if isinstance(v, dict) else {}, k in required) for k, v in props.items()]
    out += [(k, {}, True) for k in schema.get("required") or [] if k not in props]
    return out


def _regex(pattern: str) -> str:
    return "/" + pattern.replace("/", "\\/") + "/"


def _unsupported(tool: str, param: str, why: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"tools: parameter {param!r} of {tool!r}: {why}; use tool_choice 'auto'.", param="tools"
    )


def _reads_back(value: Any, typed_string: bool) -> bool:
    """Whether bare text `value` comes back from the parser as the same string: always where the schema says
    "string" (the parser then keeps the text), else only text that is not JSON ("10" would read back as 10)."""
    if not isinstance(value, str) or typed_string:
        return isinstance(value, str)
    try:
        json.loads(value)
        return False
    except ValueError:
        return True


def _xml_value(tool: str, name: str, schema: dict[str, Any], close: str, layout: dict[str, Any]) -> str:
    """A value and its closing text `close`, as one Lark expression."""
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if values and schema.get("type") in ("string", None):
        # Enum strings as the template writes them, bare; those bare text would misread ("10", "true") as JSON.
        typed = schema.get("type") == "string"
        bare = [v for v in values if _reads_back(v, typed)]
        if any("</" in v for v in bare):
            raise _unsupported(tool, name, "an enum value contains '</'")
        alts = [json.dumps(v + close) for v in bare]
        others = [v for v in values if not _reads_back(v, typed)]  # JSON, as "string" never reaches here
        if others:
            alts.append(f"%json {json.dumps({'enum': others, 'x-guidance': layout})} {json.dumps(close)}")
        return "(" + " | ".join(alts) + ")"
    if schema.get("type") == "string":
        extra = set(schema) - _STRING_KEYS
        if extra:
            raise _unsupported(tool, name, f"{sorted(extra)} cannot be enforced on bare text")
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        text = _NO_CLOSE if high is None and not low else f"[^<]{{{low},{'' if high is None else high}}}"
        return _regex(text + close.replace("\n", "\\n"))
    return f"%json {json.dumps({**schema, 'x-guidance': layout})} {json.dumps(close)}"


def _xml(open_param, close: str, call_open, call_close: str):
    """A builder for an XML family: `open_param(name)` + value + `close` per parameter.

    Calls follow each other with nothing between: the parsers keep even a "\\n" between two blocks as content."""

    def build(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
        alts = []
        for tool in tools:
            fname = _function(tool)["name"]
            if any(c in fname for c in "<>\n ") or not fname:
                raise _unsupported(fname, "", "the function name cannot be written in this format")
            parts = [json.dumps(call_open(fname))]
            for name, schema, required in _params(tool):
                item = f"{json.dumps(open_param(name))} {_xml_value(fname, name, schema, close, layout)}"
                parts.append(f"({item})" if required else f"({item})?")
            parts.append(json.dumps(call_close))
            alts.append(" ".join(parts))
        g.rules += ["start: call+" if many else "start: call", "call: " + "\n    | ".join(alts)]

    return build


qwen3_coder = _xml(lambda k: f"<parameter={k}>\n", "\n</parameter>\n",
                   lambda f: f"<tool_call>\n<function={f}>\n", "</function>\n</tool_call>")
glm4 = _xml(lambda k: f"<arg_key>{k}</arg_key>\n<arg_value>", "</arg_value>\n",
            lambda f: f"<tool_call>{f}\n", "</tool_call>")


def _python_name(name: str, what: str, tool: str) -> str:
    if not all(p.isidentifier() and not keyword.iskeyword(p) for p in name.split(".")):
        raise _unsupported(tool, name, f"the {what} is not a Python identifier")
    return name


def pythonic(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
    """`[f(a=1, b="x"), g()]`: keyword arguments in schema order, separated by ", " whichever are left out."""
    alts = []
    for t, tool in enumerate(tools):
        fname = _python_name(_function(tool)["name"], "function name", _function(tool)["name"])
        params = _params(tool)
        # first_i: the arguments from i on, the first without a leading ", "; rest_i: each with it.
        for i, (name, schema, required) in enumerate(params):
            arg = f'"{_python_name(name, "parameter name", fname)}=" %json {json.dumps({**schema, "x-guidance": layout})}'
            nxt = f"t{t}_rest{i + 1}"
            g.rules.append(f't{t}_rest{i}: ", " {arg} {nxt}' + ("" if required else f" | {nxt}"))
            g.rules.append(f"t{t}_first{i}: {arg} {nxt}" + ("" if required else f" | t{t}_first{i + 1}"))
        g.rules += [f't{t}_rest{len(params)}: ""', f't{t}_first{len(params)}: ""']
        alts.append(f'{json.dumps(fname + "(")} t{t}_first0 ")"')
    g.rules += ['start: "[" call (", " call)* "]"' if many else 'start: "[" call "]"',
                "call: " + "\n    | ".join(alts)]
