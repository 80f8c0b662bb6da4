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


def xml(open_param, close: str, call_open, call_close, between: str = "", bad_name_chars: str = "<>\n "):
    """A builder for an XML family: `call_open(g, name)`, then per parameter `open_param(name)` + value + `close`,
    then `call_close(g)`; the call's opening and closing are Lark expressions (so a marker can be one special
    token: `g.mark`). Several calls are joined by `between` (the family's parsers keep even a "\\n" between two
    blocks as content, so most join them with nothing)."""

    def build(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
        alts = []
        for tool in tools:
            fname = _function(tool)["name"]
            if any(c in fname for c in bad_name_chars) or not fname:
                raise _unsupported(fname, "", "the function name cannot be written in this format")
            parts = [call_open(g, fname)]
            for name, schema, required in _params(tool):
                item = f"{json.dumps(open_param(name))} {_xml_value(fname, name, schema, close, layout)}"
                parts.append(f"({item})" if required else f"({item})?")
            parts.append(call_close(g))
            alts.append(" ".join(parts))
        joined = f"call ({json.dumps(between)} call)*" if between else "call+"
        g.rules += [f"start: {joined}" if many else "start: call", "call: " + "\n    | ".join(alts)]

    return build


def text(write) -> Any:
    """A call opening or closing that is plain text: `write(name)` (or `write()`) as a Lark literal."""
    return lambda g, *name: json.dumps(write(*name))


qwen3_coder = xml(
    lambda k: f"<parameter={k}>\n",
    "\n</parameter>\n",
    text(lambda f: f"<tool_call>\n<function={f}>\n"),
    text(lambda: "</function>\n</tool_call>"),
)
glm4 = xml(
    lambda k: f"<arg_key>{k}</arg_key>\n<arg_value>",
    "</arg_value>\n",
    text(lambda f: f"<tool_call>{f}\n"),
    text(lambda: "</tool_call>"),
)


def _python_name(name: str, what: str, tool: str) -> str:
    if not all(p.isidentifier() and not keyword.iskeyword(p) for p in name.split(".")):
        raise _unsupported(tool, name, f"the {what} is not a Python identifier")
    return name


def separated(g: Any, prefix: str, args: list[tuple[str, bool]], sep: str) -> str:
    """A rule for `args` ((Lark expression, required) in order) joined by `sep`, optional ones left out at will,
    with no separator before the first or after the last; its name is returned."""
    # first_i: the arguments from i on, the first without a leading separator; rest_i: each with it.
    for i, (arg, required) in enumerate(args):
        nxt = f"{prefix}_rest{i + 1}"
        g.rules.append(f"{prefix}_rest{i}: {json.dumps(sep)} {arg} {nxt}" + ("" if required else f" | {nxt}"))
        g.rules.append(f"{prefix}_first{i}: {arg} {nxt}" + ("" if required else f" | {prefix}_first{i + 1}"))
    g.rules += [f'{prefix}_rest{len(args)}: ""', f'{prefix}_first{len(args)}: ""']
    return f"{prefix}_first0"


def python_calls(g: Any, tools: list[dict[str, Any]], layout: dict[str, Any]) -> str:
    """The alternatives of `f(a=1, b="x")` for each tool: keyword arguments in schema order, values `%json`."""
    alts = []
    for t, tool in enumerate(tools):
        fname = _python_name(_function(tool)["name"], "function name", _function(tool)["name"])
        args = [
            (
                (
                    f'"{_python_name(name, "parameter name", fname)}=" '
                    f"%json {json.dumps({**schema, 'x-guidance': layout})}"
                ),
                required,
            )
            for name, schema, required in _params(tool)
        ]
        alts.append(f'{json.dumps(fname + "(")} {separated(g, f"t{t}", args, ", ")} ")"')
    return "\n    | ".join(alts)


def pythonic(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
    """`[f(a=1, b="x"), g()]`: keyword arguments in schema order, separated by ", " whichever are left out."""
    g.rules += [
        'start: "[" call (", " call)* "]"' if many else 'start: "[" call "]"',
        "call: " + python_calls(g, tools, layout),
    ]
