"""Request fields -> constraints, and the matcher that enforces them, on SmolLM2's real tokenizer."""

from __future__ import annotations

import json

import pytest

from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from chatplex.structured import constraint_for_response_format, constraint_for_tool_choice, request_constraint
from chatplex.structured.matcher import GrammarCompiler

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def compiler(smollm_tokenizer) -> GrammarCompiler:
    return GrammarCompiler(smollm_tokenizer, 49152, [2])


def _run(compiler, constraint, text: str):
    """Feed `text` token by token, checking each token is in the mask; return the matcher."""
    (matcher,) = compiler.matchers(constraint, 1)
    for token in compiler._tokenizer.tokenize_str(text):
        assert matcher.allowed()[token], f"token {token} refused in {text!r}"
        matcher.accept(token)
    return matcher


def test_text_and_none_constrain_nothing():
    assert constraint_for_response_format(None) is None
    assert constraint_for_response_format({"type": "text"}) is None
    assert constraint_for_tool_choice("auto", [WEATHER], "hermes") is None


@pytest.mark.parametrize(
    "fmt",
    [
        "json",
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "{not json"}},
    ],
)
def test_bad_response_formats_name_the_field(fmt):
    with pytest.raises(InvalidRequestError) as e:
        constraint_for_response_format(fmt)
    assert e.value.param == "response_format"


def test_schema_is_enforced_token_by_token(compiler):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    c = constraint_for_response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert c.param == "response_format" and c.json_schema == schema
    assert _run(compiler, c, '{"n": 12}').is_finished
    (matcher,) = compiler.matchers(c, 1)
    mask = matcher.allowed()
    assert mask.shape == (49152,)
    assert not mask[compiler._tokenizer.tokenize_str("Hello")[0]]
    assert 0 < int(mask.sum()) < 100  # only ways to open the object


def test_forced_tool_call_uses_the_family_syntax(compiler):
    c = constraint_for_tool_choice("required", [WEATHER, TIME], "hermes", parallel=False)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert _run(compiler, c, call).is_finished
    named = constraint_for_tool_choice({"type": "function", "function": {"name": "get_time"}}, [WEATHER, TIME], "hermes")
    (matcher,) = compiler.matchers(named, 1)
    for token in compiler._tokenizer.tokenize_str('<tool_call>\n{"name": "get_'):
        matcher.accept(token)
    assert not matcher.allowed()[compiler._tokenizer.tokenize_str("weather")[0]]
    llama = constraint_for_tool_choice("required", [WEATHER], "llama3_json")
    assert _run(compiler, llama, '{"name": "get_weather", "parameters": {"city": "Oslo"}}').is_finished


def test_parallel_required_calls_may_repeat(compiler):
    c = constraint_for_tool_choice("required", [WEATHER, TIME], "hermes", parallel=True)
    one = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    matcher = _run(compiler, c, one + "\n" + one)
    assert not matcher.is_finished  # a third call may follow, or the end of the turn
    assert matcher.allowed()[2]


@pytest.mark.parametrize(
    ("choice", "tools", "parser", "error"),
    [
        ("required", None, "hermes", InvalidRequestError),
        ("always", [WEATHER], "hermes", InvalidRequestError),
        ({"type": "function", "function": {"name": "nope"}}, [WEATHER], "hermes", InvalidRequestError),
        ({"type": "function"}, [WEATHER], "hermes", InvalidRequestError),
        ("required", [WEATHER], "no_such_format", UnsupportedFeatureError),
    ],
)
def test_bad_tool_choices_name_the_field(choice, tools, parser, error):
    with pytest.raises(error) as e:
        constraint_for_tool_choice(choice, tools, parser)
    assert e.value.param == "tool_choice"


def test_json_format_and_forced_call_do_not_combine():
    with pytest.raises(InvalidRequestError) as e:
        request_constraint({"type": "json_object"}, "required", [WEATHER], "hermes")
    assert e.value.param == "response_format"
    assert json.loads(request_constraint({"type": "json_object"}, "auto", [WEATHER], "hermes").grammar)
