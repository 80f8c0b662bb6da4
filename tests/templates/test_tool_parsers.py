"""Every tool parser, both ways: the streamed events, with the reply split at every point, reassemble to exactly
what `parse` returns on the whole reply; text around calls stays content; malformed calls come back as text."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from chatplex.errors import ConfigError
from chatplex.templates import LF_TOOL_PARSERS
from chatplex.templates.tool_parsers import TOOL_PARSERS, ParsedOutput, assemble, get_tool_parser

DS_B, DS_E = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DC_B, DC_E, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
W = ("get_weather", {"city": "Paris", "days": 3})
T = ("get_time", {})
U = ("get_weather", {"city": "Zürich ☀", "note": "a \"quoted\" line\nand more"})  # non-ASCII, escapes

# parser -> [(reply, expected content, expected calls)]
CASES: dict[str, list[tuple[str, str | None, list]]] = {
    "hermes": [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>', None, [W]),
        ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'
         '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\nDone.', "Let me look.\n\n\nDone.", [W, T]),
        ('<tool_call>{"name": "get_weather", "arguments": ' + json.dumps(U[1]) + "}</tool_call>", None, [U]),
        ("Plain answer with a < sign and <tool_ but no call.", "Plain answer with a < sign and <tool_ but no call.", []),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call> ok',
         '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call> ok', []),
        ('A <tool_call>{"name": "get_time", "arguments": {}}', 'A <tool_call>{"name": "get_time", "arguments": {}}', []),
        ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ],
    "phi4_mini": [
        ('<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}<|/tool_call|>', None, [W]),
        ('ok <|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}, '
         '{"name": "get_time", "arguments": {}}]<|/tool_call|>', "ok ", [W, T]),
        ("<|tool_call|>oops<|/tool_call|>", "<|tool_call|>oops<|/tool_call|>", []),
    ],
    # LLaMA-Factory's default tool format, as its DefaultToolUtils writes calls (the goldens check the writing side)
    "react": [
        ('Action: get_weather\nAction Input: {"city": "Paris", "days": 3}', None, [W]),
        ('Let me check.\nAction: get_weather\nAction Input: {"city": "Paris", "days": 3}\nAction: get_time\n'
         'Action Input: {}', "Let me check.\n\n", [W, T]),
        ('Action: get_weather\nAction Input: ```{"city": "Paris", "days": 3}```', None, [W]),
        ('Action: get_weather\nAction Input: ' + json.dumps(U[1]), None, [U]),
        ("Action: is the word for it.", "Action: is the word for it.", []),
        ('Action: get_time\nAction Input: [1, 2]', 'Action: get_time\nAction Input: [1, 2]', []),
        ('Action: get_weather\nAction Input: {"city": "Par', 'Action: get_weather\nAction Input: {"city": "Par', []),
    ],
    # LLaMA-Factory's other tool formats, as its function formatters write calls
    "chatglm": [
        ('get_weather\n{"city": "Paris", "days": 3}', None, [W]),
        ("Paris is sunny.\nMore text.", "Paris is sunny.\nMore text.", []),
        ("get_weather\nnot json", "get_weather\nnot json", []),
        ("Sure", "Sure", []),
    ],
    "minimax1": [
        ('<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
         '{"name": "get_time", "arguments": {}}\n</tool_calls>', None, [W, T]),
        ('ok <tool_calls>\nnot json\n</tool_calls>', 'ok <tool_calls>\nnot json\n</tool_calls>', []),
    ],
    "minimax2": [
        ('<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n<parameter name="days">3</parameter>'
         '\n</invoke>', None, [W]),
        ('Let me see.<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
         '<parameter name="days">3</parameter>\n</invoke>\n<invoke name="get_time">\n</invoke>\n</minimax:tool_call>',
         "Let me see.", [W, T]),
        ('<invoke name="get_weather">oops', '<invoke name="get_weather">oops', []),
    ],
    "seed_oss": [
        # as LLaMA-Factory writes it, without the ">" after the name
        ('\n<seed:tool_call>\n<function=get_weather\n<parameter=city>Paris</parameter>\n<parameter=days>3</parameter>'
         '\n</function>\n</seed:tool_call>', "\n", [W]),
        ('<seed:tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n<parameter=days>3</parameter>'
         '\n</function>\n</seed:tool_call>', None, [W]),
    ],
    "lfm2": [
        ('<|tool_call_start|>[get_weather(city="Paris", days=3), get_time()]<|tool_call_end|>', None, [W, T]),
        ("<|tool_call_start|>[flag(on=true, none=null)]<|tool_call_end|>", None, [("flag", {"on": True, "none": None})]),
        ("<|tool_call_start|>[oops(<|tool_call_end|>", "<|tool_call_start|>[oops(<|tool_call_end|>", []),
    ],
    "gemma4": [
        ('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>', None, [W]),
        ('x<|tool_call>call:get_time{}<tool_call|>', "x", [T]),
        ('<|tool_call>call:f{note:<|"|>a: b, c<|"|>,xs:[1,2]}<tool_call|>', None, [("f", {"note": "a: b, c", "xs": [1, 2]})]),
        ('<|tool_call>nope<tool_call|>', '<|tool_call>nope<tool_call|>', []),
        ('<|tool><|tool_call>call:get_time{}<tool_call|><tool|>', None, [T]),  # inside the turn's tool wrapper
    ],
    "llama3_json": [
        ('{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}', None, [W]),
        ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}; '
         '{"name": "get_time", "parameters": {}}', None, [W, T]),
        ('\n {"name": "get_weather", "arguments": ' + json.dumps(U[1]) + "}", None, [U]),
        ('The JSON is {"name": "x", "parameters": {}}', 'The JSON is {"name": "x", "parameters": {}}', []),
        ('{"answer": 42}', '{"answer": 42}', []),
        ('[{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}, {"name": "get_time", "parameters": {}}]',
         None, [W, T]),  # several calls as one list, as LLaMA-Factory writes them
        ("[1, 2] are numbers.", "[1, 2] are numbers.", []),
        ('{"name": "get_weather", "parameters": {"city": "Par', '{"name": "get_weather", "parameters": {"city": "Par', []),
    ],
    "pythonic": [
        ('[get_weather(city="Paris", days=3)]', None, [W]),
        ('[get_weather(city="Paris", days=3), get_time()]', None, [W, T]),
        ("<|python_start|>[get_time()]<|python_end|>", None, [T]),
        ('[get_weather(city="Zürich ☀", note="a \\"quoted\\" line\\nand more")]', None, [U]),
        ("[flag(on=true, off=False, none=null, xs=[1, 2], d={'a': 1})]", None,
         [("flag", {"on": True, "off": False, "none": None, "xs": [1, 2], "d": {"a": 1}})]),
        ("[1] is a citation, not a call.", "[1] is a citation, not a call.", []),
        ("Sure: [get_time()]", "Sure: [get_time()]", []),
        ("[get_weather(city=", "[get_weather(city=", []),
    ],
    "mistral": [
        ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]', None, [W]),
        ('Checking. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}, '
         '{"name": "get_time", "arguments": {}}] then', "Checking.  then", [W, T]),
        ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}[TOOL_CALLS]get_time[ARGS]{}', None, [W, T]),
        ('[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{}', None, [T]),
        ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": ', '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": ', []),
        ("[TOOL_CALLS] hello", "[TOOL_CALLS] hello", []),
        ('[TOOL_CALLS] [{"nom": 1}]', '[TOOL_CALLS] [{"nom": 1}]', []),
    ],
    "qwen3_coder": [
        ("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
         "</parameter>\n</function>\n</tool_call>", None, [W]),
        ("I'll call two.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
         "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n"
         "</function>\n</tool_call>", "I'll call two.\n\n", [W, T]),
        ("<tool_call>\n<function=get_weather>\n<parameter=city>\nZürich ☀\n</parameter>\n<parameter=note>\n"
         'a "quoted" line\nand more\n</parameter>\n</function>\n</tool_call>', None, [U]),
        ("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n</tool_call>",
         "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n</tool_call>", []),
    ],
    "glm4": [
        # without closing tags, as LLaMA-Factory's glm4_moe format writes calls
        ("\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>"
         "\n<arg_value>3</arg_value>\n<tool_call>get_time", "\n", [W, T]),
        ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n"
         "<arg_value>3</arg_value>\n</tool_call>", None, [W]),
        ("Sure.\n<tool_call>get_time\n</tool_call><tool_call>get_weather\n<arg_key>city</arg_key>\n"
         "<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>", "Sure.\n", [T, W]),
        ("<tool_call>get_weather\n<arg_key>city</arg_key>\n</tool_call>", "<tool_call>get_weather\n<arg_key>city</arg_key>\n</tool_call>", []),
    ],
    "deepseek_v3": [
        (f"{DS_B}{DC_B}function{DS_SEP}get_weather\n```json\n" + '{"city": "Paris", "days": 3}' + f"\n```{DC_E}{DS_E}", None, [W]),
        (f"Let me see.{DS_B}{DC_B}function{DS_SEP}get_weather\n```json\n" + '{"city": "Paris", "days": 3}'
         + f"\n```{DC_E}\n{DC_B}function{DS_SEP}get_time\n```json\n{{}}\n```{DC_E}{DS_E}", "Let me see.", [W, T]),
        (f"{DS_B}{DC_B}function{DS_SEP}get_time\n```json\n{{}}\n```{DC_E}", None, [T]),  # stopped before calls_end
        (f"{DS_B}{DC_B}function{DS_SEP}get_time\n```json\n{{bad\n```{DC_E}{DS_E}",
         f"{DS_B}{DC_B}function{DS_SEP}get_time\n```json\n{{bad\n```{DC_E}{DS_E}", []),
    ],
    "deepseek_v31": [
        (f"{DS_B}{DC_B}get_weather{DS_SEP}" + '{"city": "Paris", "days": 3}' + f"{DC_E}{DS_E}", None, [W]),
        (f"ok{DS_B}{DC_B}get_weather{DS_SEP}" + '{"city": "Paris", "days": 3}' + f"{DC_E}{DC_B}get_time{DS_SEP}{{}}{DC_E}{DS_E}",
         "ok", [W, T]),
        (f"{DS_B}{DC_B}get_weather{DS_SEP}" + '{"city": ', f"{DS_B}{DC_B}get_weather{DS_SEP}" + '{"city": ', []),
    ],
}


def _calls(out: ParsedOutput) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in out.tool_calls]


def _stream(name: str, pieces: list[str]) -> ParsedOutput:
    parser = get_tool_parser(name)
    events = [ev for piece in pieces for ev in parser.feed(piece)] + parser.finish()
    return assemble(events)


def _same(a: ParsedOutput, b: ParsedOutput) -> bool:
    return a.content == b.content and [(c.name, c.arguments) for c in a.tool_calls] == [
        (c.name, c.arguments) for c in b.tool_calls
    ]


ALL = [(name, *case) for name, cases in CASES.items() for case in cases]


def test_every_parser_has_cases():
    assert set(CASES) == set(TOOL_PARSERS)


@pytest.mark.parametrize("name,text,content,calls", ALL)
def test_parse(name, text, content, calls):
    out = get_tool_parser(name).parse(text)
    assert out.content == content
    assert _calls(out) == [(n, a) for n, a in calls]
    ids = [c.id for c in out.tool_calls]
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids) and len(set(ids)) == len(ids)
    if content is not None and not calls:
        assert content == text  # malformed or plain output is never lost


@pytest.mark.parametrize("name,text,content,calls", ALL)
def test_stream_matches_parse_at_every_split(name, text, content, calls):
    whole = get_tool_parser(name).parse(text)
    assert _same(_stream(name, list(text)), whole), "char by char"
    for cut in range(len(text) + 1):
        assert _same(_stream(name, [text[:cut], text[cut:]]), whole), f"split at {cut}: {text[:cut]!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_stream_events_are_openai_deltas(name):
    text, _, calls = next(c for c in CASES[name] if c[2])
    parser = get_tool_parser(name)
    events = [ev for ch in text for ev in parser.feed(ch)] + parser.finish()
    deltas = [ev.tool_call.to_openai() for ev in events if ev.tool_call]
    first = deltas[0]
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": calls[0][0], "arguments": ""}
    assert json.loads(deltas[1]["function"]["arguments"]) == calls[0][1] and "id" not in deltas[1]
    assert {d["index"] for d in deltas} == set(range(len(calls)))


def test_streamed_content_arrives_before_the_reply_ends():
    parser = get_tool_parser("hermes")
    got = [ev.content for ev in parser.feed("Hello there, <tool") if ev.content]
    assert "".join(got) == "Hello there, "  # "<tool" is held back: it may be a marker


def test_schema_types_xml_values():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "zip": {"type": "string"}, "n": {"type": "integer"}}}}}]
    text = "<tool_call>\n<function=f>\n<parameter=zip>\n01234\n</parameter>\n<parameter=n>\n7\n</parameter>\n</function>\n</tool_call>"
    assert _calls(get_tool_parser("qwen3_coder", tools).parse(text)) == [("f", {"zip": "01234", "n": 7})]
    glm = "<tool_call>f\n<arg_key>zip</arg_key>\n<arg_value>01234</arg_value>\n</tool_call>"
    assert _calls(get_tool_parser("glm4", tools).parse(glm)) == [("f", {"zip": "01234"})]


def test_unknown_parser_names_the_choices():
    with pytest.raises(ConfigError, match="hermes"):
        get_tool_parser("nope")


def test_pairs_of_cases_stream_like_one():
    # Two replies glued together: a parser's state never leaks from one block into the next.
    for (a, _, _), (b, _, _) in itertools.product(CASES["hermes"][:3], repeat=2):
        whole = get_tool_parser("hermes").parse(a + b)
        assert _same(_stream("hermes", list(a + b)), whole)


@pytest.mark.parametrize("tool_format", sorted(LF_TOOL_PARSERS))
def test_llamafactory_formats_are_read_back(tool_format):
    """Each LLaMA-Factory tool format's calls, as a template of it writes them into the assistant's turn (the writer
    is checked against LLaMA-Factory by the goldens), come back as the same calls from the parser its templates
    use. The reply is what the model learnt to write: the turn's text up to the first stop word."""
    from chatplex.templates import llamafactory

    name = next(n for n in llamafactory.names() if llamafactory.load(n).tool_format == tool_format)
    fmt = llamafactory.load(name)
    calls = [("get_weather", {"city": "Paris", "days": 3})]
    if tool_format != "glm4":  # GLM-4's format takes one call per turn
        calls.append(("get_time", {}))
    turn = fmt._fill(fmt.function, content=fmt.calls.write_calls([(n, json.dumps(a)) for n, a in calls]))
    text = "".join(piece for piece in turn if isinstance(piece, str))
    cuts = [text.find(w) for w in fmt.stop_words if w in text]
    reply = text[: min(cuts)] if cuts else text
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}}}}]
    out = get_tool_parser(LF_TOOL_PARSERS[tool_format], tools).parse(reply)
    assert _calls(out) == calls, (name, reply)
    # left over: at most the family's marker tokens around the turn, which decoding drops as special tokens
    assert not re.sub(r"<\|[a-z_]+\|>", "", out.content or "").strip(), (name, reply)
