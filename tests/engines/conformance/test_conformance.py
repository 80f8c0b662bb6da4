"""What every engine must do the same way, checked on each engine that can run here (see conftest.ENGINES)."""

from __future__ import annotations

import asyncio
import json

import pytest

from chatplex.engines.base import PromptPreparer
from chatplex.errors import InvalidRequestError
from chatplex.sampling import build_sampling_params
from chatplex.templates import resolve_template
from tests.constrained_cases import GET_TIME, GET_WEATHER, PERSON, PERSON_PROMPT, WEATHER

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a short story about a cat."}]
GREEDY = {"do_sample": False}
# Sampling with nothing filtered, so different seeds lead to different text.
SAMPLED = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}


def test_greedy_is_deterministic_and_picks_the_argmax(engine):
    # Not "says Paris": a quantized GGUF (llama.cpp) flips near-ties in the first token, and that is not a bug.
    first = engine.model.chat(FRANCE, max_new_tokens=16, logprobs=True, top_logprobs=2, **GREEDY)[0]
    second = engine.model.chat(FRANCE, max_new_tokens=16, **GREEDY)[0]
    assert first.response_text and first.response_text == second.response_text
    assert len(first.logprobs) == first.response_length
    for item in first.logprobs:
        assert item.token == item.top[0].token
        assert item.logprob == pytest.approx(item.top[0].logprob) and item.top[0].logprob >= item.top[1].logprob


def test_streaming_equals_non_streaming(engine):
    whole = engine.model.chat(STORY, max_new_tokens=20, **GREEDY)[0].response_text
    pieces = list(engine.model.stream_chat(STORY, max_new_tokens=20, **GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == whole


async def test_async_streaming_equals_non_streaming(engine):
    whole = (await engine.model.achat(STORY, max_new_tokens=12, **GREEDY))[0].response_text
    pieces = [p async for p in engine.model.astream_chat(STORY, max_new_tokens=12, **GREEDY)]
    assert "".join(pieces) == whole


def test_n_sequences(engine):
    replies = engine.model.chat(STORY, n=3, seed=7, max_new_tokens=12, **SAMPLED)
    assert len(replies) == 3
    assert all(r.finish_reason in ("stop", "length") and r.response_text for r in replies)
    assert len({r.response_text for r in replies}) > 1, "n sequences drawn with one seed must not all be equal"
    greedy = engine.model.chat(STORY, n=2, max_new_tokens=12, **GREEDY)
    assert greedy[0].response_text == greedy[1].response_text


def test_stop_string_cuts_before_it(engine):
    full = engine.model.chat(STORY, max_new_tokens=24, **GREEDY)[0].response_text
    words = full.split()
    assert len(words) > 4
    stop = words[3]
    cut = engine.model.chat(STORY, max_new_tokens=24, stop=[stop], **GREEDY)[0]
    assert cut.response_text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_max_new_tokens_and_finish_reason(engine):
    reply = engine.model.chat(STORY, max_new_tokens=5, ignore_eos=True, **GREEDY)[0]
    assert reply.finish_reason == "length"
    assert reply.response_length == 5
    if engine.reports_token_ids:
        assert len(reply.token_ids) == 5


def test_seed_reproducibility(engine):
    a = engine.model.chat(STORY, seed=1234, max_new_tokens=16, **SAMPLED)[0].response_text
    b = engine.model.chat(STORY, seed=1234, max_new_tokens=16, **SAMPLED)[0].response_text
    c = engine.model.chat(STORY, seed=4321, max_new_tokens=16, **SAMPLED)[0].response_text
    assert a == b
    assert a != c


async def test_cancellation_aborts_in_the_engine(engine):
    reference = (await engine.model.achat(FRANCE, max_new_tokens=12, **GREEDY))[0].response_text
    before = engine.aborted()
    stream = engine.model.astream_chat(STORY, max_new_tokens=2000, ignore_eos=True, **GREEDY)
    received = 0
    async for _ in stream:
        received += 1
        if received == 3:
            break
    await stream.aclose()
    for _ in range(200):  # the abort reaches the engine (or the remote server) asynchronously
        if engine.aborted() > before:
            break
        await asyncio.sleep(0.1)
    assert engine.aborted() == before + 1
    # The engine keeps serving, and the aborted request left nothing behind.
    assert (await engine.model.achat(FRANCE, max_new_tokens=12, **GREEDY))[0].response_text == reference


BAD_VALUES = [
    {"temperature": -0.5},
    {"top_p": 0.0},
    {"top_k": -3},
    {"n": 0},
    {"max_new_tokens": 0},
    {"top_logprobs": 3},
    {"logprobs": True, "top_logprobs": 50},
    {"stop": [""]},
    {"seed": "x"},
    {"repetition_penalty": 0},
    {"tempreature": 0.5},
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda b: ",".join(b))
def test_bad_sampling_values_rejected_alike(engine, bad):
    with pytest.raises(InvalidRequestError) as expected:
        build_sampling_params(bad, engine.model.args.generating.as_request_defaults())
    with pytest.raises(InvalidRequestError) as got:
        engine.model.chat(FRANCE, **bad)
    assert (got.value.param, got.value.message) == (expected.value.param, expected.value.message)


async def test_concurrent_requests_match_sequential(engine):
    prompts = [FRANCE, STORY, [{"role": "user", "content": "Name three colors."}]]
    sequential = [(await engine.model.achat(p, max_new_tokens=12, **GREEDY))[0].response_text for p in prompts]
    together = await asyncio.gather(*(engine.model.achat(p, max_new_tokens=12, **GREEDY) for p in prompts))
    assert [r[0].response_text for r in together] == sequential


async def test_usage_counts(engine, smollm_tokenizer):
    request = engine.model.build_request(STORY, max_new_tokens=8, ignore_eos=True, logprobs=True, **GREEDY)
    template = resolve_template(None, None, smollm_tokenizer)
    expected_prompt = len(PromptPreparer(smollm_tokenizer, template, 8192).prompt_ids(request))
    deltas = [d async for d in engine.model.agenerate(request)]
    final = deltas[-1]
    assert final.finish_reason == "length"
    assert final.prompt_tokens == expected_prompt
    assert final.completion_tokens == 8
    assert sum(len(d.logprobs or []) for d in deltas) == 8
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts)
    if engine.reports_token_ids:
        assert sum(len(d.token_ids) for d in deltas) == 8
        assert all(d.prompt_tokens == expected_prompt for d in deltas)


WEATHER_TOOLS = [GET_WEATHER, GET_TIME]


def test_response_format_json_schema_is_followed(engine):
    reply = engine.model.chat(
        PERSON_PROMPT, max_new_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}, **GREEDY,
    )[0]
    data = json.loads(reply.response_text)
    assert set(data) == {"name", "age"} and isinstance(data["name"], str) and isinstance(data["age"], int)
    assert reply.finish_reason == "stop"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}],
                         ids=["required", "named"])
def test_forced_tool_calls_are_made(engine, choice):
    reply = engine.model.chat(WEATHER, tools=WEATHER_TOOLS, tool_choice=choice, parallel_tool_calls=False,
                              max_new_tokens=60, **GREEDY)[0]
    assert reply.finish_reason == "tool_calls", reply
    [call] = reply.tool_calls
    wanted = {"get_weather", "get_time"} if choice == "required" else {"get_time"}
    assert call["function"]["name"] in wanted
    assert isinstance(json.loads(call["function"]["arguments"]), dict)
