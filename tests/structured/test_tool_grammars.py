"""Forced tool calls per family: what the grammar allows is exactly what the family's parser reads back.

Two tokenizers: SmolLM2's own (markers are plain text) and a copy with the markers added as special tokens (as in
the real Mistral / DeepSeek / Phi-4-mini tokenizers), where a marker must be that one token.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from chatplex.structured import constraint_for_tool_choice
from chatplex.structured.matcher import GrammarCompiler
from chatplex.templates.tool_parsers import get_tool_parser

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "city": {"type": "string", "maxLength": 30}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time",
                                         "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {_t["function"]["name"]: _t["function"]["parameters"] for _t in TOOLS}
MARKERS = ["[TOOL_CALLS]", "<|tool_call|>", "<|/tool_call|>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
           "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"]
W_ARGS, T_ARGS = '{"unit": "celsius", "city": "Paris"}', "{}"
DS = MARKERS[3:]


def _ds_v3(*calls):
    body = "\n".join(f"{DS[2]}function{DS[4]}{n}\n```json\n{a}\n```{DS[3]}" for n, a in calls)
    return DS[0] + body + DS[1]


def _ds_v31(*calls):
    return DS[0] + "".join(f"{DS[2]}{n}{DS[4]}{a}{DS[3]}" for n, a in calls) + DS[1]


def _mistral(*calls):
    return "[TOOL_CALLS] [" + ", ".join(f'{{"name": "{n}", "arguments": {a}}}' for n, a in calls) + "]"


def _phi4(*calls):
    return "".join(f'<|tool_call|>{{"name": "{n}", "arguments": {a}}}<|/tool_call|>' for n, a in calls)


def _xml_value(v):
    return v if isinstance(v, str) else json.dumps(v)


def _qwen3_coder(*calls):
    return "".join(f"<tool_call>\n<function={n}>\n"
                     + "".join(f"<parameter={k}>\n{_xml_value(v)}\n</parameter>\n" for k, v in json.loads(a).items())
                     + "</function>\n</tool_call>" for n, a in calls)


def _glm4(*calls):
    return "".join(f"<tool_call>{n}\n"
                     + "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{_xml_value(v)}</arg_value>\n"
                               for k, v in json.loads(a).items())
                     + "</tool_call>" for n, a in calls)


def _pythonic(*calls):
    # As Gemma 3's template writes them: keyword values as JSON.
    return "[" + ", ".join(f"{n}(" + ", ".join(f"{k}={json.dumps(v)}" for k, v in json.loads(a).items()) + ")"
                           for n, a in calls) + "]"


# family -> how its template writes calls (what the grammar must allow), and whether a finished list closes
# itself (mistral's "]", DeepSeek's end marker) rather than waiting for another call or the end of the turn.
RENDER = {"mistral": (_mistral, True), "phi4_mini": (_phi4, False), "deepseek_v3": (_ds_v3, True),
          "deepseek_v31": (_ds_v31, True), "qwen3_coder": (_qwen3_coder, False), "glm4": (_glm4, False),
          "pythonic": (_pythonic, True)}


@pytest.fixture(scope="module")
def special_tokenizer(smollm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_dir)
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    return tok


@pytest.fixture(scope="module", params=["plain", "special"])
def setup(request, smollm_tokenizer, special_tokenizer):
    tok = smollm_tokenizer if request.param == "plain" else special_tokenizer
    return tok, GrammarCompiler(tok, len(tok), [2])


def _feed(compiler, tok, constraint, text):
    (matcher,) = compiler.matchers(constraint, 1)
    for token in tok.encode(text, add_special_tokens=False):
        assert matcher.allowed()[token], f"token {token} ({tok.decode([token])!r}) refused in {text!r}"
        matcher.accept(token)
    return matcher


def _check_calls(parser_name, text, expected_names):
    parsed = get_tool_parser(parser_name, TOOLS).parse(text)
    assert parsed.content is None, parsed
    assert [c.name for c in parsed.tool_calls] == expected_names
    for call in parsed.tool_calls:
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.parametrize("family", sorted(RENDER))
def test_the_template_rendering_is_allowed_and_parses(family, setup):
    tok, compiler = setup
    render, closes = RENDER[family]
    two = render(("get_weather", W_ARGS), ("get_time", T_ARGS))
    matcher = _feed(compiler, tok, constraint_for_tool_choice("required", TOOLS, family, parallel=True), two)
    assert matcher.is_finished == closes and (closes or matcher.allowed()[2])
    _check_calls(family, two, ["get_weather", "get_time"])

    one = render(("get_time", T_ARGS))
    single = constraint_for_tool_choice("required", TOOLS, family, parallel=False)
    assert _feed(compiler, tok, single, one).is_finished or not closes
    named = constraint_for_tool_choice({"type": "function", "function": {"name": "get_time"}}, TOOLS, family)
    matcher = _feed(compiler, tok, named, one)
    assert matcher.is_finished or (not closes and not any(matcher.allowed()[t] for t in tok.encode("<|tool_call|>")))
    _check_calls(family, one, ["get_time"])


@pytest.mark.parametrize("family", sorted(RENDER))
def test_one_call_only_when_parallel_is_off_or_a_function_is_named(family, setup):
    tok, compiler = setup
    render, _ = RENDER[family]
    two = render(("get_time", T_ARGS), ("get_time", T_ARGS))
    for c in (constraint_for_tool_choice("required", TOOLS, family, parallel=False),
              constraint_for_tool_choice({"type": "function", "function": {"name": "get_time"}}, TOOLS, family)):
        (matcher,) = compiler.matchers(c, 1)
        refused = False
        for token in tok.encode(two, add_special_tokens=False):
            if not matcher.allowed()[token]:
                refused = True
                break
            matcher.accept(token)
        assert refused, f"{family}: a second call was allowed"


@pytest.mark.parametrize("family", sorted(RENDER))
def test_arguments_and_names_follow_the_schema(family, setup):
    tok, compiler = setup
    render, _ = RENDER[family]
    c = constraint_for_tool_choice("required", TOOLS, family, parallel=False)
    for bad in (render(("get_weather", '{"unit": "kelvin", "city": "Paris"}')), render(("get_date", T_ARGS))):
        (matcher,) = compiler.matchers(c, 1)
        ok = True
        for token in tok.encode(bad, add_special_tokens=False):
            if not matcher.allowed()[token]:
                ok = False
                break
            matcher.accept(token)
        assert not ok, bad


def test_markers_are_one_special_token_where_the_tokenizer_has_them(special_tokenizer):
    compiler = GrammarCompiler(special_tokenizer, len(special_tokenizer), [2])
    (matcher,) = compiler.matchers(constraint_for_tool_choice("required", TOOLS, "mistral"), 1)
    mask = matcher.allowed()
    assert mask.nonzero().flatten().tolist() == [special_tokenizer.convert_tokens_to_ids("[TOOL_CALLS]")]


# -- generation round trips: the constraint on a real model, the reply read back by the family's parser ----------
TEMPLATES = {"mistral": "mistral-v0.3", "phi4_mini": "phi4-mini", "deepseek_v3": "deepseek-v3", "deepseek_v31": "deepseek3.1",
             "qwen3_coder": "qwen3-coder", "glm4": "glm4.5", "pythonic": "gemma3-hf"}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


def _check_reply(r, names):
    assert r.finish_reason == "tool_calls", repr(r.response_text)
    assert [c["function"]["name"] for c in r.tool_calls] == names or names is None
    for call in r.tool_calls:
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def assert_forced_calls_parse_back(args: dict) -> None:
    """SmolLM2 with these arguments, forced to call (any tool, then a named one), answers with valid calls."""
    from chatplex import ChatModel

    with ChatModel({"infer_dtype": "float32", **args}) as model:
        (r,) = model.chat(ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, temperature=0,
                          max_tokens=150)
        _check_reply(r, None)
        assert len(r.tool_calls) == 1
        (r,) = model.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                          temperature=0, max_tokens=150)
        _check_reply(r, ["get_weather"])


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_smollm_forced_calls_parse_back(family):
    assert_forced_calls_parse_back({"template": TEMPLATES[family]})


@pytest.fixture(scope="module")
def special_model_dir(tmp_path_factory, special_tokenizer):
    """A tiny random-weight Llama whose tokenizer has the markers as special tokens (ids past SmolLM2's vocab)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(special_tokenizer), max_position_embeddings=512,
                         eos_token_id=2, bos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-special")
    LlamaForCausalLM(config).save_pretrained(path)
    special_tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("family", ["mistral", "deepseek_v3", "deepseek_v31"])
def test_special_marker_tokens_are_generated_and_parsed(family, special_model_dir, special_tokenizer):
    from chatplex import ChatModel

    model = ChatModel({"model_name_or_path": special_model_dir, "template": TEMPLATES[family]})
    try:
        # The markers are special tokens: requests with tools keep them in the text (no skip_special_tokens
        # needed), so the parser sees them.
        (r,) = model.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
                          temperature=0, max_tokens=40)
        _check_reply(r, ["get_time"])
    finally:
        model.close()
