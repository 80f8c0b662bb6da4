"""Structured output, forced tool calls and reasoning through `chatplex serve`, with the real `openai` client."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.server.conftest import SERVED_NAME, running_server

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "capital": {"type": "boolean"}},
    "required": ["city", "capital"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
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


def _stream(client, **kw):
    """Stream a chat completion and reassemble it the way OpenAI clients do."""
    content, reasoning, calls, finish = [], [], {}, None
    for chunk in client.chat.completions.create(model=SERVED_NAME, stream=True, **kw):
        for ch in chunk.choices:
            d = ch.delta
            content.append(d.content or "")
            reasoning.append(getattr(d, "reasoning_content", None) or "")
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                slot["id"] = tc.id or slot["id"]
                slot["name"] = (tc.function.name if tc.function else None) or slot["name"]
                slot["arguments"] += (tc.function.arguments if tc.function else "") or ""
            finish = ch.finish_reason or finish
    return "".join(content), "".join(reasoning), [calls[i] for i in sorted(calls)], finish


def test_json_schema_response_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    r = client.chat.completions.create(model=SERVED_NAME, messages=Q, response_format=fmt, temperature=0, max_tokens=60)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), CITY)
    content, _, calls, finish = _stream(client, messages=Q, response_format=fmt, temperature=0, max_tokens=60)
    assert (content, calls, finish) == (r.choices[0].message.content, [], "stop")


def test_json_object_response(client):
    r = client.chat.completions.create(
        model=SERVED_NAME, messages=Q, response_format={"type": "json_object"}, temperature=0, max_tokens=60
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"]
)
def test_forced_tool_call_streamed_equals_non_streamed(client, choice):
    kw = dict(messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=False, temperature=0, max_tokens=60)
    r = client.chat.completions.create(model=SERVED_NAME, **kw)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = msg.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    tool = WEATHER if call.function.name == "get_weather" else TIME
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    content, _, calls, finish = _stream(client, **kw)
    assert finish == "tool_calls" and content == (msg.content or "")
    assert [(c["name"], c["arguments"]) for c in calls] == [(call.function.name, call.function.arguments)]
    assert calls[0]["id"].startswith("call_")


def test_tool_call_history_round_trip(client):
    """A forced call, its result as a `tool` message, then a free answer: the conversation renders and runs."""
    kw = dict(model=SERVED_NAME, tools=[WEATHER], temperature=0)
    r = client.chat.completions.create(messages=ASK, tool_choice="required", max_tokens=40, **kw)
    call = r.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    r2 = client.chat.completions.create(messages=history, tool_choice="none", max_tokens=8, **kw)
    assert r2.choices[0].message.tool_calls is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_structured_requests_are_400_naming_the_field(http, body, param):
    r = http.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 5, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory, tiny_model_dir):
    """A random-weight model under the DeepSeek V3.1 template: with enable_thinking its prompt opens `<think>`,
    so the reply starts inside the thinking block; without, the prompt closes it and the reply is all answer."""
    log = tmp_path_factory.mktemp("thinking") / "server.log"
    args = ["--model", tiny_model_dir, "--template", "deepseek3.1", "--served-model-name", SERVED_NAME]
    with running_server(args, log) as srv:
        yield srv


def test_reasoning_is_split_through_the_server(thinking_server):
    import openai

    client = openai.OpenAI(base_url=f"{thinking_server.url}/v1", api_key="x", max_retries=0, timeout=120)
    kw = dict(messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=12)
    thinking = {"chat_template_kwargs": {"enable_thinking": True}}
    r = client.chat.completions.create(model=SERVED_NAME, extra_body=thinking, **kw)
    msg = r.choices[0].message.model_dump()
    # The random model never writes </think>: everything it wrote is reasoning.
    assert msg["reasoning_content"] and msg["reasoning"] == msg["reasoning_content"]
    assert not msg["content"]
    content, reasoning, calls, finish = _stream(client, extra_body=thinking, **kw)
    assert (content, reasoning, calls, finish) == (msg["content"] or "", msg["reasoning_content"], [], "length")
    plain = client.chat.completions.create(model=SERVED_NAME, **kw).choices[0].message.model_dump()
    assert plain["content"] and not plain.get("reasoning_content")
    raw = client.completions.create(model=SERVED_NAME, prompt="<think>\nhi", temperature=0, max_tokens=4)
    assert raw.choices[0].text  # raw completions are never split
