"""Forced calls in the argument-by-argument families (qwen3_coder, glm4, pythonic): optional parameters, typed
values, bare-text strings and what each grammar refuses. Calls are fed token by token and parsed back."""

from __future__ import annotations

import json

import jsonschema
import pytest

from chatplex.errors import UnsupportedFeatureError
from chatplex.structured import constraint_for_tool_choice
from chatplex.structured.matcher import GrammarCompiler
from chatplex.templates.tool_parsers import get_tool_parser

SEARCH = {"type": "function", "function": {"name": "search", "parameters": {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "limit": {"type": "integer", "minimum": 1},
        "filters": {"type": "object", "properties": {"lang": {"type": "string"}}, "required": ["lang"],
                    "additionalProperties": False},
        "exact": {"type": "boolean"},
        "tag": {"type": "string", "maxLength": 5},
    },
    "required": ["query"],
    "additionalProperties": False,
}}}
TOOLS = [SEARCH]
FAMILIES = ["qwen3_coder", "glm4", "pythonic"]


def _value(v):
    return v if isinstance(v, str) else json.dumps(v)


def render(family, args):
    if family == "qwen3_coder":
        body = "".join(f"<parameter={k}>\n{_value(v)}\n</parameter>\n" for k, v in args.items())
        return f"<tool_call>\n<function=search>\n{body}</function>\n</tool_call>"
    if family == "glm4":
        body = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{_value(v)}</arg_value>\n" for k, v in args.items())
        return f"<tool_call>search\n{body}</tool_call>"
    return "[search(" + ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items()) + ")]"


@pytest.fixture(scope="module")
def compiler(smollm_tokenizer):
    return GrammarCompiler(smollm_tokenizer, len(smollm_tokenizer), [2])


def _accepts(compiler, tok, family, text):
    (matcher,) = compiler.matchers(constraint_for_tool_choice("required", TOOLS, family, parallel=False), 1)
    for token in tok.encode(text, add_special_tokens=False):
        if not matcher.allowed()[token]:
            return False
        matcher.accept(token)
    return matcher.is_finished or bool(matcher.allowed()[2])


GOOD = [
    {"query": "weather"},
    {"query": "a <b> c\nd", "limit": 3},
    {"query": "x", "filters": {"lang": "en"}, "exact": True, "tag": "news"},
    {"query": "", "exact": False},
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("args", GOOD, ids=range(len(GOOD)))
def test_calls_with_optional_and_typed_arguments_are_allowed_and_read_back(family, args, compiler, smollm_tokenizer):
    text = render(family, args)
    assert _accepts(compiler, smollm_tokenizer, family, text), text
    parsed = get_tool_parser(family, TOOLS).parse(text)
    assert parsed.content is None and len(parsed.tool_calls) == 1, parsed
    got = json.loads(parsed.tool_calls[0].arguments)
    assert got == args
    jsonschema.validate(got, SEARCH["function"]["parameters"])


BAD = [
    {"limit": 3},  # the required query left out
    {"query": "x", "limit": 0},  # below the minimum
    {"query": "x", "limit": 2.5},  # not an integer
    {"query": "x", "filters": {}},  # the nested required key left out
    {"query": "x", "tag": "toolong"},  # past maxLength
    {"limit": 3, "query": "x"},  # not in schema order
    {"query": "x", "other": 1},  # not a parameter
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("args", BAD, ids=range(len(BAD)))
def test_calls_that_break_the_schema_are_refused(family, args, compiler, smollm_tokenizer):
    assert not _accepts(compiler, smollm_tokenizer, family, render(family, args))


@pytest.mark.parametrize("family", ["qwen3_coder", "glm4"])
def test_bare_text_cannot_close_the_block_early(family, compiler, smollm_tokenizer):
    # "</" inside a bare value would end the value (or the whole call) for the parser.
    assert not _accepts(compiler, smollm_tokenizer, family, render(family, {"query": "a</tool_call>b"}))


@pytest.mark.parametrize("family", ["qwen3_coder", "glm4"])
def test_string_enums_are_bare_and_numeric_looking_ones_json(family, compiler, smollm_tokenizer):
    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "properties": {"level": {"enum": ["low", "10"]}}, "required": ["level"]}}}
    (matcher,) = GrammarCompiler(smollm_tokenizer, len(smollm_tokenizer), [2]).matchers(
        constraint_for_tool_choice("required", [tool], family), 1)
    head = "<tool_call>\n<function=pick>\n<parameter=level>\n" if family == "qwen3_coder" else \
        "<tool_call>pick\n<arg_key>level</arg_key>\n<arg_value>"
    for token in smollm_tokenizer.encode(head, add_special_tokens=False):
        matcher.accept(token)
    allowed = matcher.allowed()
    # "10" must be written as JSON "\"10\"" (bare 10 would read back as a number); "low" is bare text.
    assert allowed[smollm_tokenizer.encode('"', add_special_tokens=False)[0]]
    assert allowed[smollm_tokenizer.encode("low", add_special_tokens=False)[0]]
    assert not allowed[smollm_tokenizer.encode("1", add_special_tokens=False)[0]]


@pytest.mark.parametrize(("family", "properties", "field"), [
    ("qwen3_coder", {"code": {"type": "string", "pattern": "^[a-z]+$"}}, "'code'"),
    ("glm4", {"day": {"type": "string", "format": "date"}}, "'day'"),
    ("pythonic", {"class": {"type": "string"}}, "'class'"),
    ("pythonic", {"my-arg": {"type": "string"}}, "'my-arg'"),
])
def test_what_a_family_cannot_enforce_is_a_clear_error(family, properties, field):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": properties}}}
    with pytest.raises(UnsupportedFeatureError, match=field):
        constraint_for_tool_choice("required", [tool], family)


@pytest.mark.parametrize("family", ["qwen3_coder", "glm4"])
def test_typed_string_enums_are_always_bare(family, smollm_tokenizer):
    # With "type": "string" the parser keeps the text as is, so "10" must be bare (JSON "\"10\"" keeps its quotes).
    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "properties": {"level": {"type": "string", "enum": ["10"]}}, "required": ["level"]}}}
    (matcher,) = GrammarCompiler(smollm_tokenizer, len(smollm_tokenizer), [2]).matchers(
        constraint_for_tool_choice("required", [tool], family), 1)
    head = "<tool_call>\n<function=pick>\n<parameter=level>\n" if family == "qwen3_coder" else \
        "<tool_call>pick\n<arg_key>level</arg_key>\n<arg_value>"
    for token in smollm_tokenizer.encode(head, add_special_tokens=False):
        matcher.accept(token)
    assert not matcher.allowed()[smollm_tokenizer.encode('"', add_special_tokens=False)[0]]
    assert matcher.allowed()[smollm_tokenizer.encode("1", add_special_tokens=False)[0]]
