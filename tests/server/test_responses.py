"""POST/GET/DELETE /v1/responses through the official openai client against the embedded SmolLM2 (one server),
plus the event builder and the store on their own (hand-made deltas, checked against the SDK's own types)."""

from __future__ import annotations

import asyncio
import json
from typing import get_args

import jsonschema
import openai
import pytest

from chatplex.server.responses import schemas as s
from chatplex.server.responses.builder import ResponseBuilder, new_response
from chatplex.server.responses.store import ResponseStore, StoredResponse
from chatplex.templates.tool_parsers import ToolCallDelta
from chatplex.types import Delta
from tests.server.conftest import SERVED_NAME

Q = "What is the capital of France?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "capital": {"type": "boolean"}},
    "required": ["city", "capital"],
    "additionalProperties": False,
}


def _create(client, **kw):
    kw = {"model": SERVED_NAME, "input": Q, "temperature": 0, "max_output_tokens": 24, **kw}
    return client.responses.create(**kw)


def _prompt_len(tokenizer, messages) -> int:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)


# ---- create ---------------------------------------------------------------------------------------------------


def test_string_input_answers_with_exact_usage_and_echoes_settings(client, tokenizer):
    r = _create(client, instructions="You are terse.", metadata={"k": "v"}, user="u1")
    assert r.object == "response" and r.id.startswith("resp_") and r.model == SERVED_NAME
    assert r.status == "completed" and r.incomplete_details is None
    assert [o.type for o in r.output] == ["message"] and r.output[0].status == "completed"
    assert "Paris" in r.output_text
    prompt = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": Q}]
    assert r.usage.input_tokens == _prompt_len(tokenizer, prompt)  # instructions rendered as the system message
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    cached = r.usage.input_tokens_details.cached_tokens  # earlier requests may have left this prompt's blocks
    assert cached % 16 == 0 and cached < r.usage.input_tokens
    assert (r.metadata, r.user, r.instructions, r.temperature) == ({"k": "v"}, "u1", "You are terse.", 0)
    assert r.text.format.type == "text" and r.tool_choice == "auto" and r.parallel_tool_calls


def test_max_output_tokens_cut_is_incomplete(client):
    r = _create(client, max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"


def test_item_list_renders_like_the_same_chat_completion(client):
    """A function_call + function_call_output round trip, developer and assistant messages with content parts."""
    items = [
        {"role": "developer", "content": "Answer briefly."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny, 21 C"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]},
        {"role": "user", "content": "And tomorrow?"},
    ]
    r = _create(client, input=items, tools=[WEATHER], max_output_tokens=8)
    assert r.status in ("completed", "incomplete") and r.output
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": items[2]["arguments"]}}
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    chat_tools = [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    chat = client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=chat_tools, max_tokens=1)
    assert r.usage.input_tokens == chat.usage.prompt_tokens


def test_json_schema_format_validates(client):
    fmt = {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}
    r = _create(client, input=Q + " Reply in JSON.", text={"format": fmt}, max_output_tokens=60)
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), CITY)
    assert r.text.format.type == "json_schema"
    r = _create(client, input=Q + " Reply in JSON.", text={"format": {"type": "json_object"}}, max_output_tokens=60)
    assert isinstance(json.loads(r.output_text), dict)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
def test_forced_tool_call_is_a_function_call_item(client, choice):
    r = _create(client, input="What's the weather in Paris?", tools=[WEATHER], tool_choice=choice,
                parallel_tool_calls=False, max_output_tokens=60)
    calls = [o for o in r.output if o.type == "function_call"]
    assert r.status == "completed" and len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].call_id and calls[0].id.startswith("fc_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])


# ---- streaming ------------------------------------------------------------------------------------------------

TEXT_EVENTS = [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "response.output_item.done", "response.completed",
]


def _dedup(types):
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def test_stream_sends_openais_event_sequence(client):
    whole = _create(client)
    with client.responses.stream(model=SERVED_NAME, input=Q, temperature=0, max_output_tokens=24) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert _dedup([e.type for e in events]) == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == whole.output_text
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert final.id == events[0].response.id
    assert final.usage.model_dump(exclude={"input_tokens_details"}) == whole.usage.model_dump(
        exclude={"input_tokens_details"}
    )
    assert final.usage.input_tokens_details.cached_tokens > 0  # the same prompt ran just before


def test_stream_sse_lines_name_each_event(http):
    body = {"model": SERVED_NAME, "input": Q, "max_output_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in r.read().decode().split("\n\n") if b]
    for block in blocks:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == event[7:]
    assert blocks[-1].startswith("event: response.incomplete")  # cut at 4 tokens, as OpenAI ends such a stream


def test_stream_function_call_argument_events(client):
    kw = dict(model=SERVED_NAME, input="What's the weather in Paris?", tools=[WEATHER], tool_choice="required",
              parallel_tool_calls=False, temperature=0, max_output_tokens=60)
    with client.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = _dedup([e.type for e in events])
    assert types[2:] == ["response.output_item.added", "response.function_call_arguments.delta",
                         "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert args == done.arguments == final.output[0].arguments
    jsonschema.validate(json.loads(args), WEATHER["parameters"])


def test_async_client_create_and_stream(aclient):
    async def run():
        whole = await aclient.responses.create(model=SERVED_NAME, input=Q, temperature=0, max_output_tokens=24)
        async with aclient.responses.stream(model=SERVED_NAME, input=Q, temperature=0, max_output_tokens=24) as st:
            deltas = [e.delta async for e in st if e.type == "response.output_text.delta"]
            final = await st.get_final_response()
        return whole, deltas, final

    whole, deltas, final = asyncio.run(run())
    assert "".join(deltas) == final.output_text == whole.output_text and "Paris" in whole.output_text


# ---- stored responses -----------------------------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(client, tokenizer):
    first = _create(client, input="My name is Ana.", instructions="Be kind.", max_output_tokens=8)
    second = _create(client, input="What is my name?", previous_response_id=first.id, max_output_tokens=4)
    # The first turn and its reply are rendered; its instructions are not carried over (OpenAI's rule).
    turns = [{"role": "user", "content": "My name is Ana."}, {"role": "assistant", "content": first.output_text},
             {"role": "user", "content": "What is my name?"}]
    assert second.usage.input_tokens == _prompt_len(tokenizer, turns)
    assert second.previous_response_id == first.id


def test_retrieve_and_delete(client):
    r = _create(client, max_output_tokens=4)
    got = client.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()
    client.responses.delete(r.id)
    for call in (lambda: client.responses.retrieve(r.id), lambda: client.responses.delete(r.id),
                 lambda: _create(client, previous_response_id=r.id)):
        with pytest.raises(openai.NotFoundError):
            call()


def test_store_false_is_not_kept(client):
    r = _create(client, store=False, max_output_tokens=4)
    assert r.store is False
    with pytest.raises(openai.NotFoundError) as e:
        _create(client, previous_response_id=r.id, input="Again?")
    assert e.value.body["param"] == "previous_response_id"


# ---- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        ({"input": [{"type": "function_call", "call_id": "a", "name": "f", "arguments": "{"}, {"role": "user", "content": "x"}]},
         "input[0].arguments"),
        ({"max_output_tokens": -1}, "max_output_tokens"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "frob"}}}}, "text.format"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": []}, "input"),
    ],
)
def test_bad_values_are_400_naming_the_field(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        _create(client, **kw)
    assert e.value.body["param"] == param, e.value.body
    assert param.split("[")[0] in e.value.body["message"]


# ---- builder and store on their own ---------------------------------------------------------------------------

# The SDK's event classes by their `type` (its union is discriminated by the SDK itself, not by pydantic).
EVENTS = {
    get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in get_args(get_args(openai.types.responses.ResponseStreamEvent)[0])
}


def _delta(text="", reasoning="", calls=(), tokens=1, finish=None, done=[0]):
    done[0] += tokens
    return Delta(index=0, text=text, reasoning=reasoning, tool_calls=list(calls), token_ids=[0] * tokens,
                 prompt_tokens=7, completion_tokens=done[0], finish_reason=finish)


def test_builder_reasoning_text_and_calls_match_the_sdk_types():
    kept = []
    builder = ResponseBuilder(new_response(s.ResponsesRequest(input="hi"), "m"), on_finish=kept.append)
    deltas = [
        _delta(reasoning="Let me "), _delta(reasoning="think."), _delta(tokens=1), _delta(text="Sure: "),
        _delta(calls=[ToolCallDelta(index=0, arguments="", id="call_a", name="f")]),
        _delta(calls=[ToolCallDelta(index=0, arguments='{"x": 1}')]),
        _delta(calls=[ToolCallDelta(index=1, arguments="{}", id="call_b", name="g")], finish="tool_calls"),
    ]
    events = builder.start() + [e for d in deltas for e in builder.add(d)] + builder.finish()
    sdk = [EVENTS[e.type].model_validate(json.loads(e.model_dump_json())) for e in events]  # every event is OpenAI's shape
    assert [e.sequence_number for e in sdk] == list(range(len(sdk)))
    assert _dedup([e.type for e in sdk])[2:8] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done"]
    final = sdk[-1].response
    assert final.status == "completed" and kept[0].id == final.id
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert final.output[0].content[0].text == "Let me think." and final.output[0].summary == []
    assert (final.output[2].call_id, final.output[2].arguments, final.output[3].name) == ("call_a", '{"x": 1}', "g")
    assert final.usage.output_tokens_details.reasoning_tokens == 3  # the closing tag's token counts as thinking


def test_builder_counts_a_merged_delta_of_thought_and_answer_as_thinking():
    """A stream that fell behind gets several steps as one delta (engines/relay.py): one whose text holds the end of
    the thought and the start of the answer counts its tokens as thinking."""
    builder = ResponseBuilder(new_response(s.ResponsesRequest(input="hi"), "m"))
    done = [0]
    deltas = [_delta(reasoning="Let me ", tokens=2, done=done), _delta(reasoning="think.", text="Sure", tokens=3, done=done),
              _delta(text=" thing.", tokens=2, finish="stop", done=done)]
    events = builder.start() + [e for d in deltas for e in builder.add(d)] + builder.finish()
    usage = events[-1].response.usage
    assert (usage.output_tokens_details.reasoning_tokens, usage.output_tokens) == (5, 7)


def test_store_is_bounded_lru():
    store = ResponseStore(limit=2)
    make = lambda i: StoredResponse(s.ResponseObject(id=f"r{i}", created_at=0, model="m"), [])  # noqa: E731
    for i in range(3):
        store.put(make(i))
        store.get("r0")  # r0 stays the most recently used
    assert len(store) == 2 and store.get("r0") and store.get("r2")
    with pytest.raises(Exception, match="not found"):
        store.get("r1")
