"""End to end with the embedded SmolLM2 through the ChatModel facade: sync and async halves alike."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chatplex import ChatModel, ConfigError, InvalidRequestError, UnsupportedFeatureError

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
QUESTIONS = [
    "What is 2+2?",
    "Name a color.",
    "What is the capital of Italy?",
    "Say hello.",
    "What is Python?",
    "Tell me a joke.",
    "What is the sun?",
    "Count to five.",
]


def test_greedy_answer_contains_paris(chat_model):
    [reply] = chat_model.chat(FRANCE, do_sample=False, max_new_tokens=30)
    assert "Paris" in reply.response_text
    assert reply.finish_reason == "stop"
    assert reply.prompt_length > 10 and reply.response_length == len(reply.token_ids)


async def test_async_greedy_answer_contains_paris(chat_model):
    [reply] = await chat_model.achat(FRANCE, temperature=0, max_new_tokens=30)
    assert "Paris" in reply.response_text


def test_stream_equals_non_stream_at_temperature_zero(chat_model):
    messages = [{"role": "user", "content": "Write two sentences about the sea."}]
    [reply] = chat_model.chat(messages, temperature=0, max_new_tokens=48)
    pieces = list(chat_model.stream_chat(messages, temperature=0, max_new_tokens=48))
    assert len(pieces) > 5
    assert "".join(pieces) == reply.response_text


async def test_async_stream_equals_non_stream(chat_model):
    messages = [{"role": "user", "content": "List three fruits."}]
    [reply] = await chat_model.achat(messages, temperature=0, max_new_tokens=32)
    pieces = [p async for p in chat_model.astream_chat(messages, temperature=0, max_new_tokens=32)]
    assert "".join(pieces) == reply.response_text


def test_max_new_tokens_gives_length(chat_model):
    [reply] = chat_model.chat([{"role": "user", "content": "Tell me a long story."}], do_sample=False, max_new_tokens=5)
    assert reply.finish_reason == "length" and reply.response_length == 5


def test_stop_string_cuts_the_text(chat_model):
    [full] = chat_model.chat(FRANCE, do_sample=False, max_new_tokens=30)
    assert "Paris" in full.response_text
    [cut] = chat_model.chat(FRANCE, do_sample=False, max_new_tokens=30, stop=["Paris"])
    assert cut.finish_reason == "stop"
    assert cut.response_text == full.response_text[: full.response_text.index("Paris")]


def test_stop_string_spanning_tokens(chat_model):
    [full] = chat_model.chat(FRANCE, do_sample=False, max_new_tokens=30)
    # "of Fra" spans the tokens " of" and " France"
    [cut] = chat_model.chat(FRANCE, do_sample=False, max_new_tokens=30, stop="of Fra")
    assert cut.response_text == full.response_text[: full.response_text.index("of Fra")]


def test_n_three_sampled_responses(chat_model):
    replies = chat_model.chat(FRANCE, n=3, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=3)
    assert len(replies) == 3
    assert len({r.response_text for r in replies}) > 1
    again = chat_model.chat(FRANCE, num_return_sequences=3, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=3)
    assert [r.response_text for r in again] == [r.response_text for r in replies]  # seeded: reproducible


async def test_concurrent_equals_sequential_and_shares_steps(chat_model):
    sequential = [
        (await chat_model.achat([{"role": "user", "content": q}], do_sample=False, max_new_tokens=40))[0] for q in QUESTIONS
    ]
    before = chat_model.stats()
    steps0, tokens0 = before.steps, before.generated_tokens
    concurrent = await asyncio.gather(
        *(chat_model.achat([{"role": "user", "content": q}], do_sample=False, max_new_tokens=40) for q in QUESTIONS)
    )
    after = chat_model.stats()
    assert [r[0].response_text for r in concurrent] == [r.response_text for r in sequential]
    generated = after.generated_tokens - tokens0
    steps = after.steps - steps0
    assert generated == sum(r[0].response_length for r in concurrent)
    # Decoded together: far fewer steps than tokens (one at a time would need one step per token).
    assert steps < generated / 3, (steps, generated)


def test_many_threads_share_one_model(chat_model):
    expected = chat_model.chat(FRANCE, do_sample=False, max_new_tokens=20)[0].response_text
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: chat_model.chat(FRANCE, do_sample=False, max_new_tokens=20)[0].response_text, range(6)))
    assert results == [expected] * 6


def test_closing_a_stream_stops_decoding(chat_model):
    before = chat_model.stats()
    stream = chat_model.stream_chat([{"role": "user", "content": "Write a very long essay about history."}],
                                    temperature=0, max_new_tokens=400)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    time.sleep(0.5)  # let the engine thread apply the abort
    after_close = chat_model.stats()
    assert after_close.aborted_requests == before.aborted_requests + 1
    assert after_close.running == 0 and after_close.waiting == 0
    assert after_close.generated_tokens - before.generated_tokens < 50  # nowhere near 400


async def test_cancelled_task_stops_decoding(chat_model):
    before = chat_model.stats()

    async def consume():
        async for _ in chat_model.astream_chat([{"role": "user", "content": "Write a long poem."}], temperature=0, max_new_tokens=400):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)
    after = chat_model.stats()
    assert after.aborted_requests == before.aborted_requests + 1
    assert after.running == 0


def test_get_scores_on_a_generative_model_is_a_clear_error(chat_model):
    with pytest.raises(UnsupportedFeatureError, match="not a reward model"):
        chat_model.get_scores(["hello"])


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list"),
        ([{"role": "wizard", "content": "hi"}], r"messages\[0\].role: unknown role 'wizard'"),
        ([{"role": "user"}], r"messages\[0\].content: missing"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], r"messages\[1\].role: the last message is from the assistant"),
        ([{"role": "user", "content": 5}], r"messages\[0\].content: content must be"),
        ([{"role": "user", "content": [{"type": "bogus"}]}], r"messages\[0\].content\[0\].type"),
        ("hello", "non-empty list"),
    ],
)
def test_bad_messages_name_the_index(chat_model, messages, match):
    with pytest.raises(InvalidRequestError, match=match):
        chat_model.chat(messages)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"n": 0}, "num_return_sequences"),
        ({"stop": 5}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"frobnicate": 1}, "Unknown generation argument 'frobnicate'"),
        ({"num_beams": 4}, "beam search"),
    ],
)
def test_bad_generation_arguments(chat_model, kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        chat_model.chat(FRANCE, **kwargs)


def test_content_parts_and_system_argument(chat_model):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]}]
    assert chat_model.chat(parts, do_sample=False, max_new_tokens=20)[0].response_text == \
        chat_model.chat(FRANCE, do_sample=False, max_new_tokens=20)[0].response_text
    [reply] = chat_model.chat(FRANCE, system="You are a pirate. Always answer like a pirate.", do_sample=False, max_new_tokens=20)
    assert reply.prompt_length != chat_model.chat(FRANCE, do_sample=False, max_new_tokens=1)[0].prompt_length


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"infer_backend": "tensorrt"}, "infer_backend: 'tensorrt' is not valid; choose one of huggingface"),
        ({"infer_dtype": "int3"}, "infer_dtype"),
        ({"model_name_or_path": "/nonexistent/model"}, "model_name_or_path: '/nonexistent/model' does not exist"),
        ({"temperatur": 0.5}, "Unknown argument 'temperatur'. Did you mean temperature"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"template": "nonsense"}, "template: 'nonsense' is not a template name"),
        ({"num_beams": 2}, "num_beams"),
    ],
)
def test_bad_arguments_raise_value_errors(args, match):
    with pytest.raises(ValueError, match=match):
        ChatModel({"infer_dtype": "float32", **args})


def test_context_manager_frees_the_loop_thread(tiny_model_dir):
    before = {t.name for t in threading.enumerate()}
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32"}) as model:
        assert model.chat(FRANCE, max_new_tokens=3, do_sample=False)[0].response_length <= 3
    time.sleep(0.2)
    alive = {t.name for t in threading.enumerate()} - before
    assert not {"chatplex-loop", "chatplex-hf-engine"} & alive


def test_a_closed_model_says_so(tiny_model_dir):
    """After close(), every call is an EngineClosedError (a ChatplexError), not asyncio's "Event loop is closed",
    and nothing is left half-started (no "coroutine was never awaited" warning)."""
    import gc
    import warnings

    from chatplex import EngineClosedError

    model = ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32"})
    model.close()
    model.close()  # closing twice is fine
    assert str(model.engine.dtype) == "torch.float32"  # what it was loaded as stays readable
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in (lambda: model.chat(FRANCE, max_new_tokens=2), lambda: list(model.stream_chat(FRANCE)),
                     lambda: model.get_scores(["x"])):
            with pytest.raises(EngineClosedError, match="This model is closed"):
                call()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


def test_builtin_template_changes_the_prompt(tiny_model_dir):
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32", "template": "llama3.0"}) as model:
        request = model.build_request(FRANCE)
        ids = model.engine.prompts.prompt_ids(request)
        text = model.engine.tokenizer.decode(ids)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>" in text


def test_a_script_that_never_closes_its_model_exits_cleanly(tmp_path):
    """The model is closed by the exit hook, before Python's shutdown refuses new threads: no traceback."""
    script = tmp_path / "script.py"
    script.write_text(
        "from chatplex import ChatModel\n"
        "m = ChatModel({'infer_dtype': 'float32'})\n"
        "print(m.chat([{'role': 'user', 'content': 'Hi'}], max_new_tokens=2)[0].response_text)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
