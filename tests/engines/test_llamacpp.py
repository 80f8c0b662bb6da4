"""The llama.cpp engine on the embedded GGUF: prompts equal the Hugging Face engine's, grammar-constrained JSON,
logprobs, the request queue, and model-path errors. (Shared behaviour is in conformance/.)"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install-llamacpp)")

from chatplex import ChatModel  # noqa: E402
from chatplex.engines.base import PromptPreparer  # noqa: E402
from chatplex.engines.llamacpp.engine import LlamaCppEngine  # noqa: E402
from chatplex.engines.llamacpp.loader import gguf_file  # noqa: E402
from chatplex.errors import ConfigError, EngineClosedError  # noqa: E402
from chatplex.templates import resolve_template  # noqa: E402

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]


@pytest.fixture(scope="module")
def model():
    m = ChatModel({"infer_backend": "llama.cpp"})
    yield m
    m.close()


def test_prompt_ids_equal_the_hf_engines(model, smollm_tokenizer):
    request = model.build_request(MESSAGES, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    hf = PromptPreparer(smollm_tokenizer, resolve_template(None, None, smollm_tokenizer), 8192)
    assert model.engine.prompts.prompt_ids(request) == hf.prompt_ids(request)


async def test_json_schema_grammar_constrains_output(model):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    grammar = LlamaCppEngine.json_schema_grammar(schema)
    request = model.build_request([{"role": "user", "content": "Describe a person as JSON."}],
                                  do_sample=False, max_new_tokens=60)

    data = json.loads("".join([d.text async for d in model.engine.generate(request, grammar=grammar)]))
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_response_format_json_schema_through_chat(model):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    [reply] = model.chat([{"role": "user", "content": "Which city is the capital of France? Answer as JSON."}],
                         do_sample=False, max_new_tokens=40,
                         response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert isinstance(json.loads(reply.response_text)["city"], str)


def test_lora_adapters_need_gguf_and_are_never_ignored(tmp_path):
    peft_dir = tmp_path / "peft-adapter"
    peft_dir.mkdir()
    with pytest.raises(ConfigError, match="adapter_name_or_path: the llama.cpp engine takes one LoRA adapter converted to GGUF"):
        ChatModel({"infer_backend": "llama.cpp", "adapter_name_or_path": str(peft_dir)})
    with pytest.raises(ConfigError, match="lora_modules: the llama.cpp engine cannot switch adapters"):
        ChatModel({"infer_backend": "llama.cpp", "lora_modules": {"a": str(peft_dir)}})


def test_a_request_naming_an_adapter_is_refused(model):
    from chatplex.errors import NotFoundError

    with pytest.raises(NotFoundError, match="adapter 'sql' is not available"):
        model.chat([{"role": "user", "content": "hi"}], adapter="sql", max_new_tokens=2)


def test_logprobs_are_of_the_sampled_tokens(model):
    reply = model.chat(MESSAGES, do_sample=False, max_new_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=3)[0]
    assert len(reply.logprobs) == len(reply.token_ids) == 6
    for item, token in zip(reply.logprobs, reply.token_ids):
        assert item.token_id == token
        assert item.top[0].token_id == token  # greedy: the sampled token is the most likely one
        assert item.logprob == pytest.approx(item.top[0].logprob)
        assert [t.logprob for t in item.top] == sorted((t.logprob for t in item.top), reverse=True)


async def test_requests_queue_behind_one_worker(model):
    long = model.achat(MESSAGES, do_sample=False, max_new_tokens=40, ignore_eos=True)
    short = model.achat(MESSAGES, do_sample=False, max_new_tokens=3, ignore_eos=True)
    task = asyncio.ensure_future(asyncio.gather(long, short))
    waited = 0
    while not task.done():
        waited = max(waited, model.stats().waiting)
        await asyncio.sleep(0.005)
    long_text, short_text = [r[0].response_text for r in await task]
    assert long_text.startswith(short_text)
    assert waited == 1


async def test_close_refuses_running_and_waiting_requests():
    m = ChatModel({"infer_backend": "llama.cpp", "max_model_len": 512})
    try:
        first = asyncio.ensure_future(m.achat(MESSAGES, max_new_tokens=400, ignore_eos=True))
        second = asyncio.ensure_future(m.achat(MESSAGES, max_new_tokens=5))
        while m.stats().running == 0:
            await asyncio.sleep(0.01)
        await m.engine.close()
        results = await asyncio.gather(first, second, return_exceptions=True)
    finally:
        await m.aclose()
    assert all(isinstance(r, EngineClosedError) for r in results)


def test_model_path_must_be_gguf(tmp_path):
    with pytest.raises(ConfigError, match="gguf"):
        gguf_file(str(tmp_path))
    (tmp_path / "a.gguf").write_bytes(b"")
    assert gguf_file(str(tmp_path)) == str(tmp_path / "a.gguf")


def test_media_is_refused_naming_the_field(model):
    """Images, audio and video are never dropped silently: the request fails, naming the field."""
    from PIL import Image

    from chatplex.errors import UnsupportedFeatureError

    ask = [{"role": "user", "content": "What is this?"}]
    for kwargs, param in (
        ({"images": [Image.new("RGB", (8, 8))]}, "images"),
        ({"audios": [([0.0] * 160, 16000)]}, "audios"),
        ({"videos": ["clip.mp4"]}, "videos"),
    ):
        with pytest.raises(UnsupportedFeatureError, match="takes text only") as e:
            model.chat(ask, max_new_tokens=2, **kwargs)
        assert e.value.param == param
    parts = [{"role": "user", "content": [
        {"type": "text", "text": "Listen:"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]}]
    with pytest.raises(UnsupportedFeatureError, match="takes text only, not audio input") as e:
        model.chat(parts, max_new_tokens=2)
    assert e.value.param == "messages[0].content[1]"
    assert model.chat(ask, max_new_tokens=2, ignore_eos=True)[0].response_length == 2  # still serving


@pytest.mark.parametrize("key", ["mmproj", "clip_model_path"])
def test_a_multimodal_projector_is_refused_not_ignored(key):
    with pytest.raises(ConfigError, match="multimodal projectors") as e:
        ChatModel({"infer_backend": "llama.cpp", "engine_config": {key: "mmproj-model-f16.gguf"}})
    assert e.value.param == f"engine_config.{key}"
