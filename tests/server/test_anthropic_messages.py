"""POST /v1/messages and /v1/messages/count_tokens through the official `anthropic` SDK against the embedded
SmolLM2 (the session `server`, which needs an API key: the SDK sends it as x-api-key)."""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import jsonschema
import pytest
from tests.server.conftest import API_KEY, SERVED_NAME

from chatplex.server.anthropic.blocks import BlockWriter
from chatplex.templates.tool_parsers import ToolCallDelta
from chatplex.types import Delta

Q = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
# maxLength and no extra properties keep a 135M model's forced call short.
GET_WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
GET_TIME = {
    "name": "get_time",
    "description": "Get the local time in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
# This SDK dropped temperature / top_p / top_k from its signature (newer Claude models fix them); older clients
# and other tools still send them, and chatplex honours them: extra_body sends them here.
GREEDY = {"model": SERVED_NAME, "extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def ac(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)


def _text(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_text_answer_with_its_shape(ac):
    r = ac.messages.create(max_tokens=20, messages=Q, **GREEDY)
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert r.model == SERVED_NAME
    assert [b.type for b in r.content] == ["text"] and "Paris" in r.content[0].text
    assert r.stop_reason == "end_turn" and r.stop_sequence is None
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 20
    assert r.usage.cache_read_input_tokens % 16 == 0  # blocks of the prompt earlier requests left in the cache


def test_system_blocks_and_multi_turn(ac):
    # Longer than SmolLM2's default system prompt, which a given one replaces.
    system = [{"type": "text", "text": "You are a geography teacher. " * 8}, {"type": "text", "text": "Be brief."}]
    turns = [
        *Q,
        {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
        {"role": "user", "content": [{"type": "text", "text": "And of Italy?"}]},
    ]
    plain = ac.messages.create(max_tokens=12, messages=turns, **GREEDY)
    taught = ac.messages.create(max_tokens=12, messages=turns, system=system, **GREEDY)
    assert _text(plain) and _text(taught)
    assert taught.usage.input_tokens > plain.usage.input_tokens  # the system prompt reached the model


def test_max_tokens_ends_with_max_tokens(ac):
    r = ac.messages.create(max_tokens=3, messages=[{"role": "user", "content": "Tell me a story."}], **GREEDY)
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 3


def test_stop_sequence_ends_the_reply_and_is_named(ac):
    whole = _text(ac.messages.create(max_tokens=20, messages=Q, **GREEDY))
    stop = "Paris"
    r = ac.messages.create(max_tokens=20, messages=Q, stop_sequences=[stop, "zzz"], **GREEDY)
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    assert _text(r) == whole[: whole.index(stop)]


def test_stream_text_equals_final_message_and_non_streamed(ac):
    whole = ac.messages.create(max_tokens=24, messages=Q, **GREEDY)
    with ac.messages.stream(max_tokens=24, messages=Q, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == _text(final) == _text(whole)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    # Anthropic's split: input_tokens were computed, cache_read_input_tokens came from the prefix cache
    assert final.usage.cache_read_input_tokens > 0  # the same prompt ran just before
    assert (final.usage.input_tokens + final.usage.cache_read_input_tokens
            == whole.usage.input_tokens + whole.usage.cache_read_input_tokens)


def test_stream_event_order_on_the_wire(server):
    body = {"model": SERVED_NAME, "max_tokens": 8, "messages": Q, "temperature": 0, "stream": True}
    kinds = []
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, headers={"x-api-key": API_KEY}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    for event, data in zip(lines[::2], lines[1::2], strict=True):
        kind = event.removeprefix("event: ")
        assert json.loads(data.removeprefix("data: "))["type"] == kind
        kinds.append(kind)
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_async_client_create_and_stream_match_sync(ac, server):
    whole = _text(ac.messages.create(max_tokens=16, messages=Q, **GREEDY))

    async def run():
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)
        async with client:
            r = await client.messages.create(max_tokens=16, messages=Q, **GREEDY)
            async with client.messages.stream(max_tokens=16, messages=Q, **GREEDY) as stream:
                streamed = "".join([piece async for piece in stream.text_stream])
        return _text(r), streamed

    assert asyncio.run(run()) == (whole, whole)


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_time"}])
def test_forced_tool_use_is_valid_and_streams_the_same(ac, choice):
    kw = dict(max_tokens=60, messages=WEATHER, tools=[GET_WEATHER, GET_TIME], **GREEDY)
    choice = {**choice, "disable_parallel_tool_use": True}
    r = ac.messages.create(tool_choice=choice, **kw)
    assert r.stop_reason == "tool_use"
    [call] = [b for b in r.content if b.type == "tool_use"]
    if choice["type"] == "tool":
        assert call.name == "get_time"
    tool = GET_WEATHER if call.name == "get_weather" else GET_TIME
    jsonschema.validate(call.input, tool["input_schema"])
    if choice["type"] == "any":
        return  # one streamed comparison is enough on a shared 2-core machine
    with ac.messages.stream(tool_choice=choice, **kw) as stream:
        final = stream.get_final_message()
    [streamed] = [b for b in final.content if b.type == "tool_use"]
    assert (streamed.name, streamed.input, final.stop_reason) == (call.name, call.input, "tool_use")


def test_tool_result_round_trip(ac):
    """The assistant's tool_use (as a client sends it back) and the user's tool_result render and run."""
    kw = dict(tools=[GET_WEATHER], tool_choice={"type": "none"}, **GREEDY)
    call = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "unit": "celsius"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "21 C, sunny"}]}
    history = [
        *WEATHER,
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, call]},
        {"role": "user", "content": [result, {"type": "text", "text": "Summarise that."}]},
    ]
    answer = ac.messages.create(max_tokens=8, messages=history, **kw)
    assert answer.stop_reason in ("end_turn", "max_tokens") and _text(answer)
    assert not [b for b in answer.content if b.type == "tool_use"]
    failed = {"role": "user", "content": [{**result, "is_error": True}]}
    counted = ac.messages.count_tokens(model=SERVED_NAME, messages=[*history[:2], failed], tools=[GET_WEATHER])
    assert counted.input_tokens > ac.messages.count_tokens(model=SERVED_NAME, messages=WEATHER).input_tokens


def test_count_tokens_equals_the_messages_input_tokens(ac):
    kw = dict(model=SERVED_NAME, messages=WEATHER, system="Be brief.", tools=[GET_WEATHER])
    counted = ac.messages.count_tokens(**kw)
    r = ac.messages.create(max_tokens=2, extra_body={"temperature": 0}, **kw)
    assert counted.input_tokens == r.usage.input_tokens + r.usage.cache_read_input_tokens
    assert ac.messages.count_tokens(model=SERVED_NAME, messages=WEATHER).input_tokens < counted.input_tokens


def test_thinking_switch_is_accepted(ac):
    for thinking in ({"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}):
        r = ac.messages.create(max_tokens=4, messages=Q, thinking=thinking, **GREEDY)
        assert r.content  # SmolLM2 does not think: its answer comes as text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, "messages[0].content[0].type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"stop_sequences": [""]}, "stop_sequences"),
    ],
)
def test_bad_field_is_a_400_in_anthropics_shape_naming_it(server, change, field):
    body = {"model": SERVED_NAME, "max_tokens": 4, "messages": Q, **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = httpx.post(f"{server.url}/v1/messages", json=body, headers={"x-api-key": API_KEY}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(field), error


def test_sdk_raises_bad_request_with_the_body(ac):
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(max_tokens=4, messages=Q, model=SERVED_NAME, extra_body={"top_p": 7})
    assert e.value.body["type"] == "error" and "top_p" in e.value.body["error"]["message"]


def test_image_on_a_text_only_model_is_refused(ac):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(max_tokens=4, messages=[{"role": "user", "content": [image]}], **GREEDY)
    assert "text-only" in e.value.body["error"]["message"]


def test_auth_bearer_works_and_a_wrong_key_is_an_authentication_error(server):
    bearer = anthropic.Anthropic(base_url=server.url, api_key=None, auth_token=API_KEY, max_retries=0)
    assert bearer.messages.count_tokens(model=SERVED_NAME, messages=Q).input_tokens > 0
    wrong = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        wrong.messages.create(max_tokens=4, messages=Q, model=SERVED_NAME)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"


def test_unknown_model_and_large_body_in_anthropics_shape(ac, server):
    with pytest.raises(anthropic.NotFoundError) as e:
        ac.messages.create(max_tokens=4, messages=Q, model="claude-nope")
    assert e.value.body["error"]["type"] == "not_found_error"
    big = {"model": SERVED_NAME, "max_tokens": 4, "messages": [{"role": "user", "content": "x" * 70000}]}
    r = httpx.post(f"{server.url}/v1/messages", json=big, headers={"x-api-key": API_KEY}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_block_writer_orders_thinking_text_and_tool_blocks():
    """Reasoning, text and tool-call deltas (as a reasoning model's parsed output gives them) -> blocks."""
    common = {"index": 0, "token_ids": [], "prompt_tokens": 5}
    deltas = [
        Delta(text="", reasoning="Let me ", completion_tokens=1, **common),
        Delta(text="", reasoning="think.", completion_tokens=2, **common),
        Delta(text="Calling.", completion_tokens=3, **common),
        Delta(text="", tool_calls=[ToolCallDelta(0, '{"city": ', id="toolu_1", name="get_weather")],
              completion_tokens=4, **common),
        Delta(text="", tool_calls=[ToolCallDelta(0, '"Paris"}')], completion_tokens=5, finish_reason="tool_calls",
              **common),
    ]
    writer = BlockWriter(None)
    events = [e for d in deltas for e in writer.feed(d)] + writer.finish()
    assert [(e.type, getattr(e, "delta", None) and e.delta.type) for e in events] == [
        ("content_block_start", None), ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"), ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", None), ("content_block_delta", "text_delta"), ("content_block_stop", None),
        ("content_block_start", None), ("content_block_delta", "input_json_delta"),
        ("content_block_delta", "input_json_delta"), ("content_block_stop", None),
    ]
    assert [b.model_dump() for b in writer.content()] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "Calling."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert (writer.stop_reason, writer.usage.output_tokens, writer.usage.input_tokens) == ("tool_use", 5, 5)
