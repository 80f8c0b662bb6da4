"""Constrained decoding end to end through ChatModel on the embedded SmolLM2-135M (masks applied per row)."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from chatplex.errors import InvalidRequestError

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "country", "capital"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
Q = [{"role": "user", "content": "What is the capital of France? Reply in JSON."}]
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


def _format(schema):
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def test_json_schema_reply_validates(chat_model):
    (r,) = chat_model.chat(Q, response_format=_format(CITY), temperature=0, max_tokens=60)
    assert r.finish_reason == "stop"
    jsonschema.validate(json.loads(r.response_text), CITY)


def test_sampled_sequences_all_validate(chat_model):
    rs = chat_model.chat(Q, response_format=_format(CITY), temperature=1.0, seed=3, n=3, max_tokens=60)
    assert len(rs) == 3
    for r in rs:
        assert r.finish_reason == "stop", r.response_text
        jsonschema.validate(json.loads(r.response_text), CITY)


def test_json_object_streams_a_json_object(chat_model):
    text = "".join(chat_model.stream_chat(Q, response_format={"type": "json_object"}, temperature=0, max_tokens=60))
    assert isinstance(json.loads(text), dict)


def test_constrained_and_free_rows_share_a_batch(chat_model):
    """A constrained request batched with free ones: each row keeps its own mask (or none)."""
    free_alone = chat_model.chat(Q, temperature=0, max_tokens=20)[0].response_text

    async def together():
        return await asyncio.gather(
            chat_model.achat(Q, temperature=0, max_tokens=20),
            chat_model.achat(Q, response_format=_format(CITY), temperature=0, max_tokens=60),
            chat_model.achat(Q, temperature=0, max_tokens=20),
        )

    free1, constrained, free2 = chat_model._loop.run(together())
    assert free1[0].response_text == free2[0].response_text == free_alone
    jsonschema.validate(json.loads(constrained[0].response_text), CITY)


def test_required_tool_call(chat_model):
    (r,) = chat_model.chat(ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                           temperature=0, max_tokens=60)
    assert r.finish_reason == "tool_calls"
    (call,) = r.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] in ("get_weather", "get_time")
    args = json.loads(call["function"]["arguments"])
    tool = WEATHER if call["function"]["name"] == "get_weather" else TIME
    jsonschema.validate(args, tool["function"]["parameters"])
    assert "<tool_call>" not in r.response_text


def test_named_tool_call(chat_model):
    # SmolLM2 sees the tools through the generic tool prompt and fills get_time's open schema with a long object.
    (r,) = chat_model.chat(ASK, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
                           temperature=0, max_tokens=160)
    assert r.finish_reason == "tool_calls"
    assert [c["function"]["name"] for c in r.tool_calls] == ["get_time"]
    jsonschema.validate(json.loads(r.tool_calls[0]["function"]["arguments"]), TIME["function"]["parameters"])


def test_tool_choice_none_hides_tools_and_parses_nothing(chat_model):
    (r,) = chat_model.chat(ASK, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=12)
    assert r.tool_calls == [] and r.finish_reason in ("stop", "length")


def test_bad_schema_is_rejected_before_generation(chat_model):
    with pytest.raises(InvalidRequestError) as e:
        chat_model.chat(Q, response_format=_format({"type": "frob"}), max_tokens=5)
    assert e.value.param == "response_format"
    with pytest.raises(InvalidRequestError) as e:
        chat_model.build_request(ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}})
    assert e.value.param == "tool_choice"
