"""The Hugging Face engine in its own process (engine_process: true) behind ChatModel: the same greedy tokens as
transformers' `generate`, errors of the same class naming the same field, aborts that reach the engine, and an
engine process that dies ending open requests with an error instead of hanging them. The HTTP side (health, exit
code, error chunks) is in tests/server/test_engine_process.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from chatplex import ChatModel
from chatplex.engines.process.client import ProcessEngine
from chatplex.errors import (
    ConfigError, ContextLengthExceededError, EngineError, InvalidRequestError, NotFoundError,
)
from tests.engines.hf.test_engine_equivalence import NEW_TOKENS, PROMPTS, engine_outputs, reference


@pytest.fixture(scope="module")
def process_model(tiny_model_dir):
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32",
                    "engine_process": True}) as model:
        yield model


async def test_batched_greedy_equals_generate(process_model, tiny_model_dir):
    assert isinstance(process_model.engine, ProcessEngine)
    expected = [reference(tiny_model_dir("llama"), p) for p in PROMPTS]
    assert await engine_outputs(process_model) == expected
    stats = await stats_when(process_model, lambda s: s.finished_requests >= len(PROMPTS))
    assert stats.max_batch_size > 1


async def stats_when(model, ready, timeout: float = 5.0):
    """The engine's counters once `ready(stats)` (the engine process sends them within 0.1 s of a change)."""
    deadline = time.monotonic() + timeout
    while not ready(stats := model.stats()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return stats


def test_chat_render_and_counts_happen_in_the_frontend(process_model):
    messages = [{"role": "user", "content": "Hello there"}]
    [reply] = process_model.chat(messages, do_sample=False, max_new_tokens=4, ignore_eos=True)
    request = process_model.build_request(messages)
    assert reply.prompt_length == process_model.engine.count_prompt_tokens(request) > 0
    assert reply.response_length == 4 and process_model.engine.template is not None


def test_errors_keep_their_class_and_field(process_model):
    with pytest.raises(ContextLengthExceededError) as e:
        process_model.chat([{"role": "user", "content": "word " * 600}], max_new_tokens=4)
    assert e.value.param == "messages" and "512" in e.value.message
    with pytest.raises(NotFoundError, match="not loaded") as e:
        process_model.chat([{"role": "user", "content": "Hi"}], adapter="nope")
    with pytest.raises(InvalidRequestError, match="reward model|score"):
        process_model.get_scores(["Hi"])  # raised in the engine process: a chat model has no reward head
    assert process_model.chat([{"role": "user", "content": "Hi"}], max_new_tokens=2)  # still serving


async def test_an_abandoned_stream_is_aborted_in_the_engine(process_model):
    before = process_model.stats().aborted_requests
    request = process_model.build_request(prompt="Count to a thousand", max_new_tokens=400, ignore_eos=True)
    stream = process_model.agenerate(request)
    await stream.__anext__()
    await stream.aclose()
    stats = await stats_when(process_model, lambda s: s.aborted_requests > before and s.running == 0)
    assert stats.aborted_requests == before + 1 and stats.running == 0


async def test_an_engine_process_that_dies_ends_open_requests_with_an_error(tiny_model_dir):
    exits = []
    model = ChatModel({"model_name_or_path": tiny_model_dir("llama"), "engine_process": True})
    try:
        engine = model.engine
        engine.on_exit = lambda: exits.append(time.monotonic())
        request = model.build_request(prompt="Count to a thousand", max_new_tokens=400, ignore_eos=True)
        stream = model.agenerate(request)
        await stream.__anext__()
        os.kill(engine._proc.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="engine process stopped"):
            async for _ in stream:
                pass
        for _ in range(50):  # on_exit runs on the receiver thread right after the requests were failed
            if exits:
                break
            await asyncio.sleep(0.02)
        assert exits and not engine.healthy
        with pytest.raises(EngineError, match="engine process stopped"):
            await model.achat([{"role": "user", "content": "Hi"}])
        assert isinstance(model.stats().steps, int)  # the last counters it reported; no wait on a dead process
    finally:
        model.close()


def test_a_model_that_fails_to_load_raises_here_and_leaves_no_process(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')  # no weights, no tokenizer
    others = set(engine_children())  # the module's fixture's
    with pytest.raises(ConfigError, match="model_name_or_path"):
        ChatModel({"model_name_or_path": str(tmp_path), "engine_process": True})
    for _ in range(100):  # the engine process sees its frontend go and exits
        if set(engine_children()) <= others:
            break
        time.sleep(0.1)
    assert set(engine_children()) <= others


def engine_children() -> list[int]:
    """Live engine processes started by this one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"chatplex.engines.process.child" in cmdline and int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(int(entry))
    return found


async def test_a_second_frontend_attaches_with_its_own_request_numbers(process_model, tiny_model_dir):
    """`chatplex serve --api-server-count`'s frontends share one engine process: a ProcessEngine attached to it
    serves beside the first, requests of the same id from both (each frontend numbers its own) stay apart, an
    adapter loaded through one is listed by the other, and the second one leaving aborts its own requests only."""
    import dataclasses

    from chatplex.config import load_args

    assert process_model.engine.attach_path is None  # no attach socket unless asked for
    args = {"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32", "engine_process": True}
    first = ChatModel(args, engine=ProcessEngine(load_args(args), accept_frontends=True))
    second = ChatModel(args, engine=ProcessEngine(load_args(args), first.engine.attach_path))
    try:
        async def tokens(model, prompt, request_id):
            request = model.build_request(prompt=prompt, do_sample=False, max_new_tokens=NEW_TOKENS, ignore_eos=True)
            request = dataclasses.replace(request, request_id=request_id)
            return [t async for d in model.agenerate(request) for t in d.token_ids]

        got = await asyncio.gather(*(tokens(m, p, f"same-{i}") for i, p in enumerate(PROMPTS[:3])
                                     for m in (first, second)))
        expected = [reference(tiny_model_dir("llama"), p) for p in PROMPTS[:3]]
        assert got == [e for e in expected for _ in range(2)]
        stream = second.agenerate(second.build_request(prompt="Count to a thousand", max_new_tokens=400,
                                                       ignore_eos=True))
        await stream.__anext__()
        second.close()  # with its request still running
        await stream.aclose()
        stats = await stats_when(first, lambda s: s.aborted_requests == 1 and s.running == 0, timeout=15)
        assert stats.running == 0 and stats.aborted_requests == 1  # its request, aborted when it left
        assert await engine_outputs(first) == [reference(tiny_model_dir("llama"), p) for p in PROMPTS]
    finally:
        second.close()
        first.close()


async def test_an_adapter_loaded_through_one_frontend_is_known_to_all(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from chatplex.config import load_args

    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path)
    args = {"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32", "engine_process": True}
    first = ChatModel(args, engine=ProcessEngine(load_args(args), accept_frontends=True))
    second = ChatModel(args, engine=ProcessEngine(load_args(args), first.engine.attach_path))
    async def listed_by(model, names):  # the other frontend hears of it in its next frame from the engine
        deadline = time.monotonic() + 5
        while model.adapters != names and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return model.adapters

    try:
        await first.aload_adapter("mine", str(tmp_path))
        assert first.adapters == ["mine"] and await listed_by(second, ["mine"]) == ["mine"]
        await second.aunload_adapter("mine")
        assert second.adapters == [] and await listed_by(first, []) == []
    finally:
        second.close()
        first.close()


def test_dummy_weights_frontend_tokenizer_matches_the_engines_vocabulary():
    """With dummy weights the frontend builds the word-level tokenizer from the shape's vocabulary, before any engine
    process says it (so while one loads): it must be the engine's vocabulary, and a reply decodes in it."""
    from chatplex.config import load_args

    args = {"dummy_weights": "smollm2-135m", "infer_dtype": "float32", "engine_process": True, "max_model_len": 256}
    assert len(ProcessEngine(load_args(args))._tokenizer()) == 49152  # no engine process started
    with ChatModel(args) as model:
        engine = model.engine
        assert isinstance(engine, ProcessEngine)
        assert len(engine.prompts.tokenizer) == engine.prompts.vocab_size == 49152
        [reply] = model.chat([{"role": "user", "content": "t5 t7"}], do_sample=False, max_new_tokens=3, ignore_eos=True)
    assert reply.response_length == 3
    assert reply.response_text.count("t") == 3  # three word-level tokens, "t<i> " each
