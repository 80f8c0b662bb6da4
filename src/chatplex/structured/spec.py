"""What the user asked for -> a `Constraint`: `response_format` JSON modes and forced tool calls.

Grammars are llguidance's JSON form. JSON is written in one fixed layout (`{"a": 1, "b": [2, 3]}`, the layout
small models saw most in training) so a model cannot wander into endless whitespace.
"""

from __future__ import annotations

import json
from typing import Any

from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from chatplex.structured.tool_grammars import BUILDERS, tool_call_lark
from chatplex.types import Constraint

# Fixed JSON layout: no free whitespace, ", " and ": " separators.
JSON_LAYOUT: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance() -> Any:
    from llguidance import LLMatcher  # imported here: only requests that constrain need it

    return LLMatcher


def _checked(grammar: str, param: str) -> str:
    error = _llguidance().validate_grammar(grammar)
    if error:
        raise InvalidRequestError(f"{param}: the JSON schema cannot be enforced: {error}", param=param)
    return grammar


def _schema_of(response_format: dict[str, Any]) -> dict[str, Any]:
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequestError(
            "response_format.json_schema: must be an object with a 'schema' (and a 'name').", param="response_format"
        )
    schema = spec.get("schema", {})
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError:
            raise InvalidRequestError(
                "response_format.json_schema.schema: not valid JSON.", param="response_format"
            ) from None
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            "response_format.json_schema.schema: must be a JSON schema object.", param="response_format"
        )
    return schema


def constraint_for_response_format(response_format: Any) -> Constraint | None:
    """`{"type": "text" | "json_object" | "json_schema", ...}` -> a constraint (None for plain text)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequestError("response_format: must be an object with a 'type'.", param="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema: dict[str, Any] = {"type": "object"}
    elif kind == "json_schema":
        schema = _schema_of(response_format)
    else:
        raise InvalidRequestError(
            f"response_format.type: {kind!r} is not one of 'text', 'json_object', 'json_schema'.",
            param="response_format",
        )
    grammar = _llguidance().grammar_from_json_schema(schema, overrides=JSON_LAYOUT)
    return Constraint(
        _checked(grammar, "response_format"),
        "response_format",
        json_schema=schema,
        request_fields={"response_format": response_format},
    )


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def forced_tool_name(tool_choice: Any, tools: list[dict[str, Any]] | None) -> str | None:
    """The function a named `tool_choice` forces (checked against `tools`), else None."""
    if not isinstance(tool_choice, dict):
        return None
    fn = tool_choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequestError(
            'tool_choice: must be \'none\', \'auto\', \'required\' or {"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    names = [_function(t).get("name") for t in tools or []]
    if name not in names:
        raise InvalidRequestError(
            f"tool_choice: {name!r} is not one of the request's tools {names}.", param="tool_choice"
        )
    return name


def constraint_for_tool_choice(
    tool_choice: Any, tools: list[dict[str, Any]] | None, tool_parser: str, parallel: bool = True
) -> Constraint | None:
    """`tool_choice` "required" or a named function -> the family's tool-call syntax with schema-checked arguments.

    `tool_parser` names the syntax (the template's tool parser). "none" / "auto" / None constrain nothing."""
    if tool_choice in (None, "none", "auto"):
        return None
    if tool_choice != "required" and not isinstance(tool_choice, dict):
        raise InvalidRequestError(
            f"tool_choice: {tool_choice!r} is not 'none', 'auto', 'required' or a named function.", param="tool_choice"
        )
    if not tools:
        raise InvalidRequestError("tool_choice: forcing a tool call needs tools.", param="tool_choice")
    if tool_parser not in BUILDERS:
        raise UnsupportedFeatureError(
            f"tool_choice: forcing tool calls in the {tool_parser!r} format is not supported "
            f"(supported: {', '.join(sorted(BUILDERS))}); use 'auto'.",
            param="tool_choice",
        )
    name = forced_tool_name(tool_choice, tools)
    chosen = [t for t in tools if name is None or _function(t).get("name") == name]
    # A named function is called once; "required" may call several tools when parallel calls are allowed.
    lark = tool_call_lark(tool_parser, chosen, parallel and name is None, JSON_LAYOUT)
    grammar = _llguidance().grammar_from_lark(lark)
    return Constraint(_checked(grammar, "tools"), "tool_choice", request_fields={"tool_choice": tool_choice})


def request_constraint(
    response_format: Any,
    tool_choice: Any,
    tools: list[dict[str, Any]] | None,
    tool_parser: str | None,
    parallel_tool_calls: bool = True,
) -> Constraint | None:
    """The one constraint a chat request's `response_format` and `tool_choice` ask for (None: free text)."""
    fmt = constraint_for_response_format(response_format)
    calls = constraint_for_tool_choice(tool_choice, tools, tool_parser or "hermes", parallel_tool_calls)
    if fmt is not None and calls is not None:
        raise InvalidRequestError(
            "response_format: a JSON response format cannot be combined with a forced tool call (tool_choice).",
            param="response_format",
        )
    return fmt or calls
