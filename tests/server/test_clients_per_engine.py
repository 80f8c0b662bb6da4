"""The same client cases against `chatplex serve` on every engine that runs here, through the official openai
client (sync and async): one interface whatever the engine. The Hugging Face and llama.cpp engines run in
`make test`, and the openai engine in front of a second `chatplex serve`; vLLM runs in `make test-vllm` (its own
environment).

The embedded SmolLM2-135M-Instruct is small: cases check what the API promises (shapes, equality at temperature 0,
constraints honoured), never the content's quality."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
from typing import NamedTuple

import openai
import pytest

from tests.constrained_cases import GET_WEATHER, PERSON, PERSON_PROMPT, WEATHER
from tests.server.conftest import API_KEY, running_server

pytestmark = pytest.mark.slow

ENGINES = {
    "huggingface": ("torch", ["--infer-dtype", "float32"]),
    "llama.cpp": ("llama_cpp", ["--infer-backend", "llama.cpp"]),
    "vllm": ("vllm", ["--infer-backend", "vllm", "--infer-dtype", "float32"]),
    # The openai engine in front of another chatplex serve (Hugging Face engine) on loopback.
    "openai": ("torch", ["--infer-backend", "openai"]),
}
Q = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a short story about a cat."}]
TOOLS = [GET_WEATHER]


class Served(NamedTuple):
    client: openai.OpenAI
    aclient: openai.AsyncOpenAI
    model: str
    base_url: str


@pytest.fixture(scope="module", params=list(ENGINES))
def served(request, tmp_path_factory):
    module, args = ENGINES[request.param]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{request.param}: {module!r} is not installed in this environment")
    if request.param == "vllm":
        from chatplex.models.embedded import embedded_model_dir

        args = [*args, "--model", embedded_model_dir()]
    logs = tmp_path_factory.mktemp("serve")
    with contextlib.ExitStack() as stack:
        if request.param == "openai":
            backend = stack.enter_context(running_server(["--infer-dtype", "float32"], logs / "backend.log"))
            args = [*args, "--api-base", f"{backend.url}/v1"]
        else:
            args = [*args, "--max-model-len", "2048"]
        srv = stack.enter_context(running_server([*args, "--api-key", API_KEY], logs / f"{request.param}.log"))
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
        aclient = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
        yield Served(client, aclient, client.models.list().data[0].id, f"{srv.url}/v1")


def chat(served, **kw):
    return served.client.chat.completions.create(model=served.model, **kw)


def streamed_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_chat_answers_with_usage(served):
    r = chat(served, messages=Q, temperature=0, max_tokens=12)
    choice = r.choices[0]
    assert choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_ends_with_length(served):
    r = chat(served, messages=STORY, temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_stream_equals_non_stream_at_temperature_0(served):
    whole = chat(served, messages=STORY, temperature=0, max_tokens=40).choices[0].message.content
    chunks = list(chat(served, messages=STORY, temperature=0, max_tokens=40, stream=True))
    assert streamed_text(chunks) == whole
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1


def test_async_stream_equals_sync_at_temperature_0(served):
    aclient, model = served.aclient, served.model
    whole = chat(served, messages=STORY, temperature=0, max_tokens=40).choices[0].message.content

    async def run() -> str:
        stream = await aclient.chat.completions.create(
            model=model, messages=STORY, temperature=0, max_tokens=40, stream=True
        )
        return streamed_text([c async for c in stream])

    assert asyncio.run(run()) == whole


def test_seed_makes_sampling_repeatable(served):
    kw = {"messages": STORY, "temperature": 1.0, "top_p": 1.0, "seed": 7, "max_tokens": 20}
    assert chat(served, **kw).choices[0].message.content == chat(served, **kw).choices[0].message.content


def test_n_gives_n_choices(served):
    r = chat(served, messages=STORY, temperature=1.0, seed=3, n=2, max_tokens=8)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)


def test_stop_string_ends_the_reply(served):
    whole = chat(served, messages=STORY, temperature=0, max_tokens=40).choices[0].message.content
    stop = whole.split()[3]
    r = chat(served, messages=STORY, temperature=0, max_tokens=40, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and stop not in r.choices[0].message.content


def test_logprobs_shape(served):
    r = chat(served, messages=Q, temperature=0, max_tokens=6, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(item.top_logprobs) == 2 and item.token == item.top_logprobs[0].token for item in content)


def test_response_format_json_schema(served):
    r = chat(served, messages=PERSON_PROMPT, temperature=0,
             max_tokens=60, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)


def test_response_format_json_object(served):
    r = chat(served, messages=[{"role": "user", "content": "Give me a JSON object about a cat."}], temperature=0,
             max_tokens=60, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # a cut reply is not whole JSON; a finished one must be
        assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
def test_forced_tool_call(served, choice):
    # One call: with parallel calls allowed, this small model goes on to repeat the call until max_tokens.
    r = chat(served, messages=WEATHER, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False, temperature=0,
             max_tokens=60)
    assert r.choices[0].finish_reason == "tool_calls"
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)


def test_streamed_tool_call_equals_non_streamed(served):
    kw = {"messages": WEATHER, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
          "temperature": 0, "max_tokens": 60}
    [whole] = chat(served, **kw).choices[0].message.tool_calls
    name, arguments, reasons = "", "", []
    for chunk in chat(served, stream=True, **kw):
        for c in chunk.choices:
            reasons += [c.finish_reason] if c.finish_reason else []
            for piece in c.delta.tool_calls or []:
                name += piece.function.name or ""
                arguments += piece.function.arguments or ""
    assert (name, json.loads(arguments)) == (whole.function.name, json.loads(whole.function.arguments))
    assert reasons == ["tool_calls"]


def test_bad_sampling_value_is_a_400_naming_the_field(served):
    with pytest.raises(openai.BadRequestError) as info:
        chat(served, messages=Q, temperature=-1)
    assert "temperature" in str(info.value)


# ---- LangChain (langchain-openai's ChatOpenAI) -------------------------------------------------------------------
def langchain_model(served, **kw):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=served.base_url, api_key=API_KEY, model=served.model, max_retries=0, **kw)


def test_langchain_invoke_stream_and_async_agree_at_temperature_0(served):
    llm = langchain_model(served, temperature=0, max_tokens=40)
    whole = llm.invoke(STORY).content
    assert whole and "".join(chunk.content for chunk in llm.stream(STORY)) == whole

    async def run() -> tuple[str, str]:
        streamed = "".join([chunk.content async for chunk in llm.astream(STORY)])
        return (await llm.ainvoke(STORY)).content, streamed

    assert asyncio.run(run()) == (whole, whole)


def test_langchain_bound_tools_and_structured_output(served):
    llm = langchain_model(served, temperature=0, max_tokens=60)
    message = llm.bind_tools(TOOLS, tool_choice="get_weather", parallel_tool_calls=False).invoke(WEATHER)
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    schema = {"title": "person", "description": "A person", **PERSON}
    person = llm.with_structured_output(schema, method="json_schema").invoke(PERSON_PROMPT)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


# ---- LiteLLM -----------------------------------------------------------------------------------------------------
def litellm_module():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its cost table from the package, not the web
    import litellm

    litellm.telemetry = False
    return litellm


def litellm_kw(served, **kw):
    return {"model": f"openai/{served.model}", "api_base": served.base_url, "api_key": API_KEY, **kw}


def test_litellm_completion_stream_and_async_agree_at_temperature_0(served):
    litellm = litellm_module()
    kw = litellm_kw(served, messages=STORY, temperature=0, max_tokens=40)
    whole = litellm.completion(**kw).choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in litellm.completion(stream=True, **kw))
    assert whole and streamed == whole
    assert asyncio.run(litellm.acompletion(**kw)).choices[0].message.content == whole


def test_litellm_forced_tool_call_and_json_schema(served):
    litellm = litellm_module()
    r = litellm.completion(**litellm_kw(served, messages=WEATHER, tools=TOOLS, tool_choice="required",
                                        parallel_tool_calls=False, temperature=0, max_tokens=60))
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    r = litellm.completion(**litellm_kw(
        served, messages=PERSON_PROMPT, temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
    ))
    assert set(json.loads(r.choices[0].message.content)) == {"name", "age"}


# ---- the other APIs' official clients: the same reply as chat/completions on every engine ----------------------
def test_responses_api_agrees_with_chat_at_temperature_0(served):
    whole = chat(served, messages=STORY, temperature=0, max_tokens=40).choices[0].message.content
    r = served.client.responses.create(model=served.model, input=STORY[0]["content"], temperature=0,
                                       max_output_tokens=40)
    assert r.output_text == whole
    with served.client.responses.stream(model=served.model, input=STORY, temperature=0,
                                        max_output_tokens=40) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    assert "".join(deltas) == whole
    forced = served.client.responses.create(
        model=served.model, input=WEATHER, tools=[{"type": "function", **GET_WEATHER["function"]}],
        tool_choice="required", parallel_tool_calls=False, temperature=0, max_output_tokens=60,
    )
    [call] = [item for item in forced.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)


def test_anthropic_messages_agree_with_chat_at_temperature_0(served):
    import anthropic

    whole = chat(served, messages=STORY, temperature=0, max_tokens=40).choices[0].message.content
    client = anthropic.Anthropic(base_url=served.base_url.removesuffix("/v1"), api_key=API_KEY, max_retries=0)
    kw = {"model": served.model, "max_tokens": 40, "messages": STORY, "extra_body": {"temperature": 0}}
    assert client.messages.create(**kw).content[0].text == whole
    with client.messages.stream(**kw) as stream:
        assert "".join(stream.text_stream) == whole
    tool = {"name": "get_weather", "description": GET_WEATHER["function"]["description"],
            "input_schema": GET_WEATHER["function"]["parameters"]}
    forced = client.messages.create(model=served.model, max_tokens=60, messages=WEATHER, tools=[tool],
                                    tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                    extra_body={"temperature": 0})
    [use] = [block for block in forced.content if block.type == "tool_use"]
    assert forced.stop_reason == "tool_use" and use.name == "get_weather" and "city" in use.input


def test_ollama_chat_agrees_with_chat_at_temperature_0(served):
    import ollama

    whole = chat(served, messages=STORY, temperature=0, max_tokens=40).choices[0].message.content
    client = ollama.Client(host=served.base_url.removesuffix("/v1"), headers={"Authorization": f"Bearer {API_KEY}"})
    options = {"temperature": 0, "num_predict": 40}
    assert client.chat(served.model, messages=STORY, options=options, stream=False).message.content == whole
    streamed = "".join(part.message.content for part in client.chat(served.model, messages=STORY, options=options,
                                                                     stream=True))
    assert streamed == whole
