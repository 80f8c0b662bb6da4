"""POST /v1/chat/completions through the real openai client against the embedded SmolLM2."""

from __future__ import annotations

import uuid

import pytest

from tests.server.conftest import SERVED_NAME

Q = [{"role": "user", "content": "What is the capital of France?"}]


def _stream(client, **kw):
    return list(client.chat.completions.create(model=SERVED_NAME, messages=Q, stream=True, **kw))


def test_answers_and_reports_served_name(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=Q, temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content
    assert r.model == SERVED_NAME and r.object == "chat.completion"
    assert r.choices[0].finish_reason == "stop"


def test_content_parts_and_model_omitted(http):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is the capital of "}, {"type": "text", "text": "France?"}]}],
            "temperature": 0, "max_tokens": 20}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_streamed_text_equals_non_streamed_at_temperature_0(client):
    whole = client.chat.completions.create(model=SERVED_NAME, messages=Q, temperature=0, max_tokens=24)
    chunks = _stream(client, temperature=0, max_tokens=24)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"


def test_exactly_one_finish_reason_per_choice_in_its_last_chunk(client):
    chunks = _stream(client, temperature=1.0, seed=3, n=2, max_tokens=12)
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        reasons = [c.finish_reason for c in mine if c.finish_reason is not None]
        assert len(reasons) == 1 and mine[-1].finish_reason == reasons[0]


def test_usage_is_exact(client, tokenizer):
    r = client.chat.completions.create(model=SERVED_NAME, messages=Q, temperature=0, max_tokens=3)
    prompt_ids = tokenizer.apply_chat_template(Q, add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt_ids["input_ids"] if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys") else prompt_ids
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == 3
    assert r.usage.total_tokens == len(prompt_ids) + 3
    assert len(tokenizer.encode(r.choices[0].message.content, add_special_tokens=False)) <= 3


def test_stream_include_usage_matches_non_streamed(client):
    whole = client.chat.completions.create(model=SERVED_NAME, messages=Q, temperature=0, max_tokens=10)
    chunks = _stream(client, temperature=0, max_tokens=10, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [getattr(chunks[-1].usage, k) for k in counts] == [getattr(whole.usage, k) for k in counts]
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt ran just before
    assert all(c.usage is None for c in chunks[:-1])


def test_usage_reports_cached_prompt_tokens_and_metrics_count_them(client, http):
    """The second request with the same long system prompt finds it in the prefix cache: usage says how many of its
    prompt tokens came from there (all full blocks of 16 but the one holding the last token), /metrics counts them."""
    system = f"You are assistant {uuid.uuid4()}. " + "Answer briefly and politely, in English. " * 12
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
    before = _metric(http, "chatplex:prefix_cache_hits_total")
    first = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=2)
    second = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=2)
    prompt = first.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == (prompt - 1) // 16 * 16 > 100
    assert second.usage.prompt_tokens == prompt and second.choices[0].message == first.choices[0].message
    assert _metric(http, "chatplex:prefix_cache_hits_total") - before == (prompt - 1) // 16 * 16
    assert 0 < _metric(http, "chatplex:prefix_cache_hit_rate") < 1
    assert _metric(http, "chatplex:prefix_cache_queries_total") > _metric(http, "chatplex:prefix_cache_hits_total")


def _metric(http, name: str) -> float:
    [value] = [float(line.split()[-1]) for line in http.get("/metrics").text.splitlines() if line.startswith(name + " ")]
    return value


def test_n_gives_n_choices_and_counts_all_completion_tokens(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=Q, n=3, temperature=1.0, seed=1, max_tokens=6)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    lengths = [c.finish_reason for c in r.choices]
    assert all(reason in ("stop", "length") for reason in lengths)
    assert r.usage.completion_tokens >= 3  # every choice produced at least one token, counted once each


def test_seed_makes_sampling_repeatable(client):
    kw = dict(model=SERVED_NAME, messages=[{"role": "user", "content": "Tell me a story."}], temperature=1.0, max_tokens=16)
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1  # the seed actually changes the sample


def test_stop_string_ends_the_reply(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=Q, temperature=0, max_tokens=20, stop=["Paris"])
    assert r.choices[0].finish_reason == "stop"
    assert "Paris" not in r.choices[0].message.content
    assert r.choices[0].message.content.startswith("The capital of France is")


def test_logprobs_shape(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=Q, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
        assert item.token == item.top_logprobs[0].token  # greedy takes the most likely token
    streamed = _stream(client, temperature=0, max_tokens=5, logprobs=True, top_logprobs=2)
    items = [i for c in streamed if c.choices and c.choices[0].logprobs for i in c.choices[0].logprobs.content]
    assert [i.token for i in items] == [i.token for i in content]


def test_real_client_conversations_with_tools(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "rain"},
    ]
    r = client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=tools, tool_choice="auto", temperature=0, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 30  # both system messages and both tool results were rendered
    r = client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=tools, tool_choice="none", temperature=0, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("alias", ["max_tokens", "max_completion_tokens"])
def test_both_length_fields(client, alias):
    r = client.chat.completions.create(model=SERVED_NAME, messages=Q, temperature=0, **{alias: 2})
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"


def test_sampling_extras_are_accepted(client):
    r = client.chat.completions.create(
        model=SERVED_NAME, messages=Q, max_tokens=4, temperature=0.8, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, logit_bias={"504": -100}, user="u1", seed=5,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert r.usage.completion_tokens >= 1
