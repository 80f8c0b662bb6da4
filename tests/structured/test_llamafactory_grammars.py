"""Forced tool calls in LLaMA-Factory's own tool formats (react, chatglm, minimax1/2, seed_oss, lfm2, gemma4): the
grammar allows exactly the calls its function formatter writes (chatplex's port of it, checked against its goldens
in tests/templates), the format's parser reads them back, and on SmolLM2 a forced call comes back as a valid call.

Two tokenizers, as for the model families: SmolLM2's own (markers are plain text) and a copy with the formats'
markers added as special tokens (as in LFM2's and Gemma 4's real tokenizers), where a marker must be that token.
"""

from __future__ import annotations

import pytest

from chatplex.structured import constraint_for_tool_choice
from chatplex.structured.matcher import GrammarCompiler
from chatplex.templates import LF_TOOL_PARSERS
from chatplex.templates.llamafactory.tool_formats import FORMATS
from chatplex.templates.tool_parsers import get_tool_parser
from tests.structured.test_tool_grammars import (
    SCHEMAS, T_ARGS, TOOLS, W_ARGS, _feed, assert_forced_calls_parse_back,
)

# parser -> LLaMA-Factory's tool_format of that name
FORMAT_OF = {parser: fmt for fmt, parser in LF_TOOL_PARSERS.items()
             if parser in ("react", "chatglm", "minimax1", "minimax2", "seed_oss", "lfm2", "gemma4")}
ONE_CALL_ONLY = {"chatglm"}  # its formatter writes the first call of a turn only
MARKERS = ["<|tool_call_start|>", "<|tool_call_end|>", "<|tool_call>", "<tool_call|>", '<|"|>', "<seed:tool_call>",
           "</seed:tool_call>"]


def _written(parser: str, *calls: tuple[str, str]) -> str:
    return FORMATS[FORMAT_OF[parser]]({}).write_calls(list(calls))


@pytest.fixture(scope="module", params=["plain", "special"])
def setup(request, smollm_tokenizer, smollm_dir):
    from transformers import AutoTokenizer

    tok = smollm_tokenizer
    if request.param == "special":
        tok = AutoTokenizer.from_pretrained(smollm_dir)
        tok.add_special_tokens({"additional_special_tokens": MARKERS})
    return tok, GrammarCompiler(tok, len(tok), [2])


def _reads_back(parser: str, text: str, names: list[str]) -> None:
    import json

    import jsonschema

    parsed = get_tool_parser(parser, TOOLS).parse(text)
    assert (parsed.content or "").strip() == "", parsed  # at most the "\n" its formatter puts between calls
    assert [c.name for c in parsed.tool_calls] == names
    for call in parsed.tool_calls:
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


def _allowed(compiler, tok, constraint, text: str) -> bool:
    (matcher,) = compiler.matchers(constraint, 1)
    for token in tok.encode(text, add_special_tokens=False):
        if not matcher.allowed()[token]:
            return False
        matcher.accept(token)
    return True


@pytest.mark.parametrize("parser", sorted(FORMAT_OF))
def test_its_written_calls_are_allowed_and_read_back(parser, setup):
    tok, compiler = setup
    one = _written(parser, ("get_weather", W_ARGS))
    _feed(compiler, tok, constraint_for_tool_choice("required", TOOLS, parser, parallel=False), one)
    _reads_back(parser, one, ["get_weather"])
    named = constraint_for_tool_choice({"type": "function", "function": {"name": "get_time"}}, TOOLS, parser)
    _feed(compiler, tok, named, _written(parser, ("get_time", T_ARGS)))
    if parser not in ONE_CALL_ONLY:
        two = _written(parser, ("get_weather", W_ARGS), ("get_time", T_ARGS))
        _feed(compiler, tok, constraint_for_tool_choice("required", TOOLS, parser, parallel=True), two)
        _reads_back(parser, two, ["get_weather", "get_time"])


@pytest.mark.parametrize("parser", sorted(FORMAT_OF))
def test_schema_names_and_call_count_are_enforced(parser, setup):
    tok, compiler = setup
    single = constraint_for_tool_choice("required", TOOLS, parser, parallel=False)
    assert not _allowed(compiler, tok, single, _written(parser, ("get_weather", '{"unit": "kelvin", "city": "Paris"}')))
    assert not _allowed(compiler, tok, single, _written(parser, ("get_date", T_ARGS)))
    if parser not in ONE_CALL_ONLY:
        assert not _allowed(compiler, tok, single, _written(parser, ("get_time", T_ARGS), ("get_time", T_ARGS)))


def test_gemma4_refuses_what_its_syntax_cannot_hold():
    from chatplex.errors import UnsupportedFeatureError

    nested = {"type": "function", "function": {"name": "book", "parameters": {
        "type": "object", "properties": {"where": {"type": "object", "properties": {"city": {"type": "string"}}}}}}}
    with pytest.raises(UnsupportedFeatureError, match="parameter 'where' of 'book'.*gemma4"):
        constraint_for_tool_choice("required", [nested], "gemma4")


@pytest.mark.parametrize("parser", sorted(FORMAT_OF))
def test_smollm_forced_calls_in_its_formats_parse_back(parser):
    """SmolLM2 under LLaMA-Factory's `default` template with `tool_format` set, as a user of a model fine-tuned in
    that format would serve it."""
    assert_forced_calls_parse_back({"template": "default", "tool_format": FORMAT_OF[parser]})
