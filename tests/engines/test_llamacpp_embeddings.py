"""Embeddings from the llama.cpp engine on the embedded SmolLM2 GGUF: equal to llama-cpp-python's own pooled
embeddings, batch-independent, close in direction to the Hugging Face model's, and harmless to generation."""

from __future__ import annotations

import asyncio

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install-llamacpp)")

import llama_cpp

from chatplex import ChatModel
from chatplex.errors import ContextLengthExceededError, InvalidRequestError

pytestmark = pytest.mark.slow
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "x"]
# Over 512 tokens: the engine feeds it in n_batch chunks through the KV cache; the reference pools it in one.
LONG = " ".join(f"Sentence {i} is about apples, rivers and the number {i * 7}." for i in range(50))
POOLING_TYPES = {"last": llama_cpp.LLAMA_POOLING_TYPE_LAST, "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN}


@pytest.fixture(scope="module")
def model():
    m = ChatModel({"infer_backend": "llama.cpp"})
    yield m
    m.close()


def _llama_cpp_own(path: str, mode: str, texts: list[str]) -> torch.Tensor:
    """llama-cpp-python's own embeddings, with llama.cpp doing the pooling (one micro-batch holds the whole input).
    Each text alone: given a list, llama-cpp-python decodes the inputs together over one shared cache, and the long
    input's vector then moves by up to 4e-3 with its neighbours (measured); chatplex decodes each input alone."""
    ref = llama_cpp.Llama(
        model_path=path, embedding=True, pooling_type=POOLING_TYPES[mode], n_ctx=2048, n_batch=2048, n_ubatch=2048,
        verbose=False,
    )
    try:
        return torch.tensor([ref.embed(t, normalize=True) for t in texts])
    finally:
        ref.close()


@pytest.mark.parametrize("mode", ["last", "mean"])
def test_equal_to_llama_cpps_own_pooling(model, mode):
    texts = [*TEXTS, LONG]
    result = model.embed(texts, pooling=mode)
    ids = [model.engine.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert len(ids[-1]) > 512
    assert result.prompt_tokens == sum(map(len, ids))
    torch.testing.assert_close(torch.tensor(result.vectors), _llama_cpp_own(model.engine.path, mode, texts),
                               atol=1e-5, rtol=1e-4)


def test_last_is_the_default_and_differs_from_mean(model):
    last, mean = (torch.tensor(model.embed(TEXTS, pooling=p).vectors) for p in ("last", "mean"))
    torch.testing.assert_close(torch.tensor(model.embed(TEXTS).vectors), last)
    assert ((last - mean)[:2].norm(dim=-1) > 0.5).all()  # measured 1.02 and 0.65
    torch.testing.assert_close(last[2], mean[2])  # "x" is one token: its last token is its mean
    torch.testing.assert_close(last.norm(dim=-1), torch.ones(len(TEXTS)))


async def _aembed(model: ChatModel, item, mode: str) -> list[float]:
    # The model's loop is its own: hand the coroutine to it, as a caller on another loop would.
    future = asyncio.run_coroutine_threadsafe(model.aembed(item, pooling=mode), model._loop.loop)
    return (await asyncio.wrap_future(future)).vectors[0]


@pytest.mark.parametrize("mode", ["last", "mean"])
def test_a_batch_equals_one_at_a_time_and_token_ids_equal_text(model, mode):
    batch = torch.tensor(model.embed(TEXTS, pooling=mode).vectors)
    alone = torch.tensor([asyncio.run(_aembed(model, t, mode)) for t in TEXTS])  # the async twin
    torch.testing.assert_close(alone, batch, atol=0, rtol=0)  # each input is decoded on its own
    ids = [model.engine.tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
    torch.testing.assert_close(torch.tensor(model.embed(ids, pooling=mode).vectors), batch, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["last", "mean"])
def test_direction_agrees_with_the_hf_model(model, smollm_dir, mode):
    """Against transformers' fp32 forward of the same SmolLM2, which the Hugging Face engine's embed equals
    (tests/engines/hf/test_embedding.py). The GGUF is Q4_1, so the vectors are close, not equal."""
    from transformers import AutoModel, AutoTokenizer

    tok, ref = AutoTokenizer.from_pretrained(smollm_dir), AutoModel.from_pretrained(smollm_dir, dtype=torch.float32)
    with torch.no_grad():
        hidden = [ref(**tok(t, return_tensors="pt")).last_hidden_state[0] for t in TEXTS]
    pooled = torch.stack([h[-1] if mode == "last" else h.mean(0) for h in hidden])
    cosine = torch.nn.functional.cosine_similarity(torch.tensor(model.embed(TEXTS, pooling=mode).vectors), pooled)
    # Measured on SmolLM2-135M-Instruct.Q4_1: last 0.9996-0.9999, mean 0.9991-0.9999 (Q4_1 barely turns them).
    assert (cosine > 0.995).all(), cosine


def test_chat_is_unchanged_by_an_embed_call(model):
    messages = [{"role": "user", "content": "Name a fruit."}]
    before = model.chat(messages, do_sample=False, max_new_tokens=12, ignore_eos=True)[0].response_text
    model.embed(TEXTS, pooling="mean")
    after = model.chat(messages, do_sample=False, max_new_tokens=12, ignore_eos=True)[0].response_text
    assert after == before


def test_refusals_name_the_field(model):
    for kwargs, param in (
        ({"pooling": "cls"}, "pooling"),
        ({"dimensions": 64}, "dimensions"),  # not a Matryoshka model
        ({"prompt_name": "query"}, "prompt_name"),
    ):
        with pytest.raises(InvalidRequestError, match=param) as e:
            model.embed("hi", **kwargs)
        assert e.value.param == param
    with pytest.raises(InvalidRequestError, match="outside the vocabulary") as e:
        model.embed([[1, 10**6]])
    assert e.value.param == "input"
    with pytest.raises(ContextLengthExceededError, match="input\\[0\\]"):
        model.embed([[1] * (model.engine.prompts.max_model_len + 1)])
    assert len(model.embed("still serving").vectors[0]) == 576
