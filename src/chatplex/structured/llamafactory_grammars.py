"""Forced calls in the tool formats LLaMA-Factory teaches that no model family's builder here writes.

Each grammar writes a call as LLaMA-Factory's own function formatter writes it (chatplex.templates.llamafactory.
tool_formats, checked against its goldens), which is what a model fine-tuned with that `tool_format` learnt, and
what the format's parser (templates/tool_parsers/react.py, llamafactory.py) reads back:

- `react` (its default): `Action: NAME\\nAction Input: {json}`, calls joined by "\\n"
- `chatglm` (its glm4): `NAME\\n{json}`, one call per reply (its formatter writes only the first)
- `minimax1`: `<tool_calls>\\n` one `{"name", "arguments"}` object per line `\\n</tool_calls>`
- `minimax2`: `<invoke name="N">` + `\\n<parameter name="K">V</parameter>` each + `\\n</invoke>`, joined by "\\n"
- `seed_oss`: `\\n<seed:tool_call>\\n<function=N` + `\\n<parameter=K>V</parameter>` each +
  `\\n</function>\\n</seed:tool_call>` (no ">" after the name: its formatter writes none), joined by "\\n"
- `lfm2`: `<|tool_call_start|>[name(k=V, ...), ...]<|tool_call_end|>`
- `gemma4`: `<|tool_call>call:NAME{k:V,...}<tool_call|>`, keys sorted, strings between `<|"|>` quotes; parameters
  of scalar types (string, number, integer, boolean, enums) and lists of them; an object-valued parameter is
  refused up front (its nested key syntax is not JSON, so `%json` cannot write it), and forced strings hold no "<"
  (it could begin the closing quote).

JSON arguments are `%json` of the tool's schema, XML values as in `arg_grammars` (same limits).
"""

from __future__ import annotations

import json
from typing import Any

from chatplex.structured.arg_grammars import _function, _params, _unsupported, python_calls, separated, text, xml


def _json_args(tool: dict[str, Any], layout: dict[str, Any]) -> str:
    params = _function(tool).get("parameters") or {"type": "object"}
    return f"%json {json.dumps({**params, 'x-guidance': layout})}"


def _joined(many: bool, between: str) -> str:
    return f"start: call ({json.dumps(between)} call)*" if many else "start: call"


def react(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
    alts = [
        f"{json.dumps('Action: ' + _function(t)['name'] + chr(10) + 'Action Input: ')} {_json_args(t, layout)}"
        for t in tools
    ]
    g.rules += [_joined(many, "\n"), "call: " + "\n    | ".join(alts)]


def chatglm(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
    alts = [f"{json.dumps(_function(t)['name'] + chr(10))} {_json_args(t, layout)}" for t in tools]
    g.rules += ["start: call", "call: " + "\n    | ".join(alts)]


def minimax1(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
    from chatplex.structured.tool_grammars import _call_object

    g.rules += [
        (
            f'start: "<tool_calls>\\n" {"call" if not many else "call (" + json.dumps(chr(10)) + " call)*"} '
            '"\\n</tool_calls>"'
        ),
        f"call: {_call_object(tools, 'arguments', layout)}",
    ]


minimax2 = xml(
    lambda k: f'\n<parameter name="{k}">',
    "</parameter>",
    text(lambda f: f'<invoke name="{f}">'),
    text(lambda: "\n</invoke>"),
    between="\n",
    bad_name_chars='<>"\n ',
)
seed_oss = xml(
    lambda k: f"\n<parameter={k}>",
    "</parameter>",
    lambda g, f: f'"\\n" {g.mark("<seed:tool_call>")} {json.dumps(chr(10) + "<function=" + f)}',
    lambda g: f'"\\n</function>\\n" {g.mark("</seed:tool_call>")}',
    between="\n",
)


def lfm2(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
    calls = 'call (", " call)*' if many else "call"
    g.rules += [
        f'start: {g.mark("<|tool_call_start|>")} "[" {calls} "]" {g.mark("<|tool_call_end|>")}',
        "call: " + python_calls(g, tools, layout),
    ]


_GEMMA_SCALARS = {
    "number": '%json {"type": "number"}',
    "integer": '%json {"type": "integer"}',
    "boolean": '("true" | "false")',
    "null": '"null"',
}


def _gemma_value(g: Any, tool: str, name: str, schema: dict[str, Any], layout: dict[str, Any]) -> str:
    quote = g.mark('<|"|>')
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if values is not None:
        if not all(isinstance(v, (str, int, float, bool)) or v is None for v in values):
            raise _unsupported(tool, name, "an enum of objects or lists cannot be written in the gemma4 format")
        alts = [f"{quote} {json.dumps(v)} {quote}" if isinstance(v, str) else json.dumps(json.dumps(v)) for v in values]
        return "(" + " | ".join(alts) + ")"
    kind = schema.get("type")
    if kind == "string":
        extra = set(schema) - {"type", "description", "title", "default", "examples", "minLength", "maxLength"}
        if extra:
            raise _unsupported(tool, name, f"{sorted(extra)} cannot be enforced on a gemma4 string")
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        # text up to the closing quote, so no "<" in it (it could begin one)
        return f"{quote} /[^<]{{{low},{'' if high is None else high}}}/ {quote}"
    if kind in _GEMMA_SCALARS:
        return _GEMMA_SCALARS[kind]
    if kind == "array" and isinstance(schema.get("items"), dict):
        item = _gemma_value(g, tool, name, schema["items"], layout)
        return f'"[" ({item} ("," {item})*)? "]"'
    raise _unsupported(tool, name, f"a {kind or 'untyped'} value cannot be written in the gemma4 format")


def gemma4(g: Any, tools: list[dict[str, Any]], many: bool, layout: dict[str, Any]) -> None:
    alts = []
    for t, tool in enumerate(tools):
        fname = _function(tool)["name"]
        if any(c in fname for c in "{}<>\n "):
            raise _unsupported(fname, "", "the function name cannot be written in the gemma4 format")
        params = sorted(_params(tool))  # its formatter writes the keys sorted
        args = [
            (f"{json.dumps(name + ':')} {_gemma_value(g, fname, name, schema, layout)}", required)
            for name, schema, required in params
        ]
        body = separated(g, f"t{t}", args, ",")
        alts.append(
            f'{g.mark("<|tool_call>")} {json.dumps("call:" + fname + "{")} {body} "}}" {g.mark("<tool_call|>")}'
        )
    g.rules += ["start: call+" if many else "start: call", "call: " + "\n    | ".join(alts)]
