"""Ollama's API under /api/ through the official `ollama` package against a real `chatplex serve` (embedded SmolLM2)."""

from __future__ import annotations

import asyncio
import json

import httpx
import ollama
import pytest

from tests.server.conftest import API_KEY, SERVED_NAME

Q = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 16}
# A 1x1 PNG
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def oc(server) -> ollama.Client:
    return ollama.Client(host=server.url, headers=AUTH, timeout=120)


def _error(call) -> ollama.ResponseError:
    with pytest.raises(ollama.ResponseError) as info:
        call()
    return info.value


def _assert_done(final, reason: str | None = None) -> None:
    assert final.done is True and final.done_reason in ("stop", "length")
    assert reason is None or final.done_reason == reason
    assert final.prompt_eval_count > 0 and final.eval_count > 0
    for name in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert getattr(final, name) > 0
    assert final.load_duration == 0
    assert final.total_duration >= final.prompt_eval_duration


def test_chat_streamed_equals_whole_at_temperature_0(oc, tokenizer):
    whole = oc.chat(SERVED_NAME, messages=Q, options=GREEDY)
    chunks = list(oc.chat(SERVED_NAME, messages=Q, options=GREEDY, stream=True))
    assert whole.message.role == "assistant" and "Paris" in whole.message.content
    assert "".join(c.message.content or "" for c in chunks) == whole.message.content
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].message.content == ""
    _assert_done(whole)
    _assert_done(chunks[-1], whole.done_reason)
    assert (chunks[-1].eval_count, chunks[-1].prompt_eval_count) == (whole.eval_count, whole.prompt_eval_count)
    prompt_ids = tokenizer.apply_chat_template(Q, add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids
    assert whole.prompt_eval_count == len(prompt_ids)
    assert whole.model == SERVED_NAME


def test_async_client_and_tagged_name(server):
    async def both():
        client = ollama.AsyncClient(host=server.url, headers=AUTH, timeout=120)
        whole = await client.chat(f"{SERVED_NAME}:latest", messages=Q, options=GREEDY)
        streamed = [c async for c in await client.chat(SERVED_NAME, messages=Q, options=GREEDY, stream=True)]
        return whole, streamed

    whole, streamed = asyncio.run(both())
    assert whole.model == f"{SERVED_NAME}:latest"
    assert "".join(c.message.content or "" for c in streamed) == whole.message.content


def test_generate_templated_raw_and_streamed(oc):
    templated = oc.generate(SERVED_NAME, prompt="What is the capital of France?", options=GREEDY)
    assert "Paris" in templated.response
    _assert_done(templated)
    chunks = list(oc.generate(SERVED_NAME, prompt="What is the capital of France?", options=GREEDY, stream=True))
    assert "".join(c.response for c in chunks) == templated.response and chunks[-1].done
    raw = oc.generate(SERVED_NAME, prompt="What is the capital of France?", raw=True, options=GREEDY)
    _assert_done(raw)
    assert raw.prompt_eval_count < templated.prompt_eval_count  # no chat template around the raw prompt
    # SmolLM2's template adds its own system prompt when there is none; a longer one must replace it
    system = oc.generate(SERVED_NAME, prompt="Hi", system="You answer in French. " * 20, options={"num_predict": 2})
    plain = oc.generate(SERVED_NAME, prompt="Hi", options={"num_predict": 2})
    assert system.prompt_eval_count > plain.prompt_eval_count + 60


def test_num_predict_seed_and_stop(oc):
    short = oc.chat(SERVED_NAME, messages=Q, logprobs=True, top_logprobs=2, options={"temperature": 0, "num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3
    assert len(short.logprobs) == 3 and all(len(p.top_logprobs) == 2 and p.logprob <= 0 for p in short.logprobs)
    story = [{"role": "user", "content": "Tell me a story."}]
    a, b = (oc.chat(SERVED_NAME, messages=story, options={"temperature": 1.0, "seed": 7, "num_predict": 8}) for _ in "ab")
    assert a.message.content == b.message.content
    whole = oc.chat(SERVED_NAME, messages=Q, options=GREEDY).message.content
    word = whole.split()[2]
    cut = oc.chat(SERVED_NAME, messages=Q, options={**GREEDY, "stop": [word]})
    assert cut.done_reason == "stop" and cut.message.content == whole[: whole.index(word)]


def test_num_predict_minus_one_runs_to_the_end_and_num_ctx_is_accepted(oc):
    r = oc.generate(SERVED_NAME, prompt="Say hi.", think=False, keep_alive="5m", options={"temperature": 0, "num_predict": -1, "num_ctx": 99999, "num_thread": 2})
    _assert_done(r)


def test_format_json_schema(oc):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = oc.chat(SERVED_NAME, messages=Q, format=schema, options={"temperature": 0, "num_predict": 40})
    value = json.loads(r.message.content)
    assert set(value) == {"city"} and isinstance(value["city"], str)


def test_tool_call_round_trip_and_tool_call_shape(oc):
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
    ]
    r = oc.chat(SERVED_NAME, messages=history, tools=[WEATHER], options=GREEDY)
    _assert_done(r)
    asked = [{"role": "user", "content": "Call the get_weather tool for the city of Paris."}]
    r = oc.chat(SERVED_NAME, messages=asked, tools=[WEATHER], options={"temperature": 0, "num_predict": 40})
    for call in r.message.tool_calls or []:  # the 135M model may answer in words instead
        assert isinstance(call.function.name, str) and isinstance(call.function.arguments, dict)


def test_images_on_a_text_only_model_are_a_clear_400(oc):
    e = _error(lambda: oc.chat(SERVED_NAME, messages=[{"role": "user", "content": "What is this?", "images": [PNG]}]))
    assert e.status_code == 400 and "text-only" in e.error
    e = _error(lambda: oc.generate(SERVED_NAME, prompt="What is this?", images=[PNG]))
    assert e.status_code == 400 and "text-only" in e.error


def test_tags_show_ps_and_version(oc, http):
    [model] = oc.list().models
    assert model.model == f"{SERVED_NAME}:latest" and model.size > 0 and len(model.digest) == 64
    assert model.details.format == "safetensors" and model.details.family == "llama"
    assert model.details.parameter_size == "135M" and model.details.quantization_level == "F32"
    shown = oc.show(SERVED_NAME)
    assert shown.capabilities[0] == "completion" and "{%" in shown.template
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["llama.context_length"] == 1024
    assert "temperature" in shown.parameters and shown.details.family == "llama"
    [running] = oc.ps().models
    assert running.model == f"{SERVED_NAME}:latest" and running.context_length == 1024
    assert running.expires_at is not None
    r = http.get("/api/version")
    assert r.status_code == 200 and isinstance(r.json()["version"], str)


def test_empty_chat_and_generate_load_the_model(oc):
    assert oc.chat(SERVED_NAME, messages=[]).done_reason == "load"
    assert oc.generate(SERVED_NAME, prompt="").done_reason == "load"


def test_errors_in_ollama_shape(oc, server):
    e = _error(lambda: oc.chat("no-such-model", messages=Q))
    assert e.status_code == 404 and e.error == "model 'no-such-model' not found"
    e = _error(lambda: oc.show("no-such-model:7b"))
    assert e.status_code == 404
    e = _error(lambda: oc.chat(SERVED_NAME, messages=Q, options={"temperature": "hot"}))
    assert e.status_code == 400 and "options.temperature" in e.error
    e = _error(lambda: oc.chat(SERVED_NAME, messages=Q, options={"repeat_penalty": 50.0}))
    assert e.status_code == 400 and e.error.startswith("options.repeat_penalty:")
    e = _error(lambda: oc.generate(SERVED_NAME, prompt="Hi", template="{{ .Prompt }}"))
    assert e.status_code == 400 and "template" in e.error
    e = _error(lambda: oc.chat(SERVED_NAME, messages=Q, think=True))
    assert e.status_code == 400 and "does not support thinking" in e.error
    r = httpx.post(f"{server.url}/api/chat", json={"model": SERVED_NAME, "messages": Q})
    assert r.status_code == 401 and set(r.json()) == {"error"}


def test_streams_ndjson_by_default(http):
    with http.stream("POST", "/api/generate", json={"model": SERVED_NAME, "prompt": "Hi", "options": GREEDY}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])
    assert "done_reason" not in lines[0] and lines[0]["model"] == SERVED_NAME


def test_tool_call_pieces_become_ollama_calls_whole_and_streamed():
    """The 135M model will not call tools on its own: the mapping is checked on hand-made deltas (real types)."""
    from chatplex.server.ollama import replies
    from chatplex.templates.tool_parsers import ToolCallDelta
    from chatplex.types import Delta

    def deltas():
        pieces = [
            ToolCallDelta(index=0, arguments="", id="call_1", name="get_weather"),
            ToolCallDelta(index=0, arguments='{"city": '),
            ToolCallDelta(index=0, arguments='"Paris"}'),
            ToolCallDelta(index=1, arguments="{}", id="call_2", name="now"),
        ]

        async def gen():
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                yield 0, Delta(index=0, text="", token_ids=[i], prompt_tokens=5, completion_tokens=i + 1,
                               tool_calls=[piece], finish_reason="tool_calls" if last else None)

        return gen()

    shape = replies.chat_shape("m")
    whole = asyncio.run(replies.whole(deltas(), replies.Clock(), shape))

    async def collect():
        return [c async for c in replies.chunks(deltas(), replies.Clock(), shape)]

    streamed = asyncio.run(collect())
    expected = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}, "index": 0}},
                {"function": {"name": "now", "arguments": {}, "index": 1}}]
    assert whole.model_dump(exclude_none=True)["message"]["tool_calls"] == expected
    assert whole.done_reason == "stop" and whole.eval_count == 4 and whole.prompt_eval_count == 5
    assert [c.done for c in streamed] == [False, True]
    assert streamed[0].model_dump(exclude_none=True)["message"]["tool_calls"] == expected
    parsed = ollama.ChatResponse.model_validate_json(whole.model_dump_json(exclude_none=True))
    assert parsed.message.tool_calls[0].function.arguments == {"city": "Paris"}
