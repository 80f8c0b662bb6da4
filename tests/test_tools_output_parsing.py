"""chatplex.output_parsing: reasoning, content and tool calls split once, streamed == whole, on synthetic replies."""

from __future__ import annotations

import asyncio
import json

import pytest

from chatplex.output_parsing import openai_tool_calls, parse_deltas, reply_parsers, tool_parser_name
from chatplex.templates import ChatTemplate, load_builtin
from chatplex.types import Delta, GenerationRequest, SamplingParams

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
REPLY = (
    "<think>\nweigh it up</think>\n\nCalling now. "
    '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n'
    '<tool_call>\n{"name": "f", "arguments": {"x": 2}}\n</tool_call>'
)


def _request(tools=TOOLS, parallel=True) -> GenerationRequest:
    return GenerationRequest(SamplingParams(), messages=[{"role": "user", "content": "hi"}], tools=tools,
                             parallel_tool_calls=parallel)


def _run(template: ChatTemplate, request: GenerationRequest, pieces: list[str], prompt: str = "") -> list[Delta]:
    make = reply_parsers(template, request, lambda: prompt)
    assert make is not None

    async def deltas():
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield Delta(index=0, text=piece, token_ids=[i], prompt_tokens=5, completion_tokens=i + 1, finish_reason="stop" if last else None)

    async def collect():
        return [d async for d in parse_deltas(deltas(), make)]

    return asyncio.run(collect())


def _joined(deltas: list[Delta]):
    calls = openai_tool_calls([c for d in deltas for c in d.tool_calls])
    return (
        "".join(d.reasoning for d in deltas),
        "".join(d.text for d in deltas),
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls],
        deltas[-1].finish_reason,
    )


def test_whole_reply_splits_three_ways():
    out = _joined(_run(load_builtin("qwen3"), _request(), [REPLY]))
    assert out == ("weigh it up", "Calling now. \n", [("f", {"x": 1}), ("f", {"x": 2})], "tool_calls")


@pytest.mark.parametrize("cut", range(1, len(REPLY)))
def test_streamed_split_at_every_point_equals_whole(cut):
    whole = _joined(_run(load_builtin("qwen3"), _request(), [REPLY]))
    assert _joined(_run(load_builtin("qwen3"), _request(), [REPLY[:cut], REPLY[cut:]])) == whole


def test_char_by_char_equals_whole_and_ids_are_stable():
    deltas = _run(load_builtin("qwen3"), _request(), list(REPLY))
    assert _joined(deltas) == _joined(_run(load_builtin("qwen3"), _request(), [REPLY]))
    firsts = [c for d in deltas for c in d.tool_calls if c.id is not None]
    assert [c.index for c in firsts] == [0, 1] and all(c.id.startswith("call_") and c.name == "f" for c in firsts)


def test_parallel_tool_calls_false_keeps_one():
    assert _joined(_run(load_builtin("qwen3"), _request(parallel=False), [REPLY]))[2] == [("f", {"x": 1})]


def test_prompt_that_opens_think_starts_in_reasoning():
    out = _joined(_run(load_builtin("deepseek-r1"), _request(tools=None), ["plan</think>The answer."], prompt="<think>\n"))
    assert out == ("plan", "The answer.", [], "stop")


def test_cut_short_reply_keeps_length_and_text():
    make = reply_parsers(load_builtin("qwen3"), _request(), lambda: "")

    async def deltas():
        yield Delta(
            index=0, text='<tool_call>\n{"name": "f", "argu', token_ids=[1], prompt_tokens=5, completion_tokens=1,
            finish_reason="length",
        )

    out = asyncio.run(_collect(parse_deltas(deltas(), make)))
    assert out[0].finish_reason == "length" and out[0].tool_calls == []
    assert out[0].text.startswith("<tool_call>")


async def _collect(gen):
    return [d async for d in gen]


def test_which_replies_are_parsed():
    chatml = load_builtin("phi3")
    assert tool_parser_name(chatml, TOOLS) == "hermes"  # no format of its own: Hermes <tool_call>
    assert tool_parser_name(load_builtin("chatml"), TOOLS) == "react"  # LLaMA-Factory's default tool format
    assert tool_parser_name(load_builtin("llama3.1"), TOOLS) == "llama3_json"
    assert tool_parser_name(chatml, None) is None and tool_parser_name(None, TOOLS) is None
    assert reply_parsers(chatml, _request(tools=None), lambda: "") is None  # nothing to split
    raw = GenerationRequest(SamplingParams(), prompt="hi", tools=TOOLS)
    assert reply_parsers(load_builtin("qwen3"), raw, lambda: "") is None  # raw completions stay raw


def test_only_marker_token_families_keep_special_tokens():
    from chatplex.output_parsing import keeps_special_tokens

    assert {p for p in ("hermes", "llama3_json", "pythonic", "mistral", "qwen3_coder", "deepseek_v3", "deepseek_v31",
                        "glm4", "phi4_mini", None) if keeps_special_tokens(p)} == {
        "mistral", "deepseek_v3", "deepseek_v31", "phi4_mini"}
