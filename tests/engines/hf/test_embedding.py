"""Embeddings in-process: sentence-transformers checkpoints in each pooling mode, and the causal LM's own hidden
states, against transformers' forward pooled by hand (tests/engines/hf/tiny_bert.py); sync and async twins."""

from __future__ import annotations

import asyncio

import pytest
import torch

from chatplex import ChatModel
from chatplex.errors import ConfigError, InvalidRequestError, UnsupportedFeatureError
from tests.engines.hf.tiny_bert import TEXTS, embedding_model, reference_embeddings


@pytest.mark.parametrize(("mode", "normalize"), [("cls", True), ("mean", False), ("last", True)])
def test_sentence_transformers_pooling(tmp_path, mode, normalize):
    path = embedding_model(tmp_path / mode, mode, normalize)
    expected = reference_embeddings(path, TEXTS, mode, normalize)
    with ChatModel({"model_name_or_path": path}) as model:
        result = model.embed(TEXTS)  # one padded batch
        alone = [model.embed(text).vectors[0] for text in TEXTS]
        assert model.tokenize(TEXTS[0]) == model.engine.local_tokenizer(TEXTS[0])["input_ids"]
        with pytest.raises(UnsupportedFeatureError, match="embedding model"):
            model.chat([{"role": "user", "content": "hi"}])
    torch.testing.assert_close(torch.tensor(result.vectors), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(alone), expected, atol=1e-5, rtol=1e-4)
    assert result.prompt_tokens == sum(len(t.split()) + 2 for t in TEXTS)  # every word is one token, + CLS, SEP


def test_prompts_and_matryoshka(tmp_path):
    path = embedding_model(tmp_path / "m", "mean", matryoshka_dimensions=[8, 16, 32])
    (tmp_path / "m" / "config_sentence_transformers.json").write_text('{"prompts": {"query": "what is "}}')
    with ChatModel({"model_name_or_path": path, "task": "embed"}) as model:
        full = torch.tensor(model.embed(TEXTS[:2]).vectors)
        cut = torch.tensor(model.embed(TEXTS[:2], dimensions=16).vectors)
        torch.testing.assert_close(cut, torch.nn.functional.normalize(full[:, :16], dim=-1))
        with pytest.raises(InvalidRequestError, match="dimensions") as e:
            model.embed("x", dimensions=12)
        assert e.value.param == "dimensions"
        prompted = model.embed("a cat", prompt_name="query").vectors[0]
        expected = reference_embeddings(path, ["what is a cat"], "mean")[0]
        torch.testing.assert_close(torch.tensor(prompted), expected, atol=1e-5, rtol=1e-4)
        with pytest.raises(InvalidRequestError, match="prompt_name"):
            model.embed("x", prompt_name="passage")


def test_task_embed_needs_pooling_module(smollm_dir):
    with pytest.raises(ConfigError, match="task: embed"):
        ChatModel({"model_name_or_path": smollm_dir, "task": "embed"})


@pytest.mark.parametrize("mode", ["last", "mean"])
def test_causal_lm_hidden_states(chat_model, smollm_dir, mode):
    from transformers import AutoModel, AutoTokenizer

    texts = ["Hello there", "The quick brown fox jumps over the lazy dog", "x"]
    tok, ref = AutoTokenizer.from_pretrained(smollm_dir), AutoModel.from_pretrained(smollm_dir, dtype=torch.float32)
    with torch.no_grad():
        pooled = []
        for text in texts:
            hidden = ref(**tok(text, return_tensors="pt")).last_hidden_state[0]
            pooled.append(hidden[-1] if mode == "last" else hidden.mean(0))
    expected = torch.nn.functional.normalize(torch.stack(pooled), dim=-1)
    batch = chat_model.embed(texts, pooling=mode)
    alone = [asyncio.run(_aembed(chat_model, t, mode)) for t in texts]  # the async twin, one at a time
    tol = {"atol": 1e-4, "rtol": 1e-3} if chat_model.engine.dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(torch.tensor(batch.vectors), expected, **tol)
    torch.testing.assert_close(torch.tensor(alone), torch.tensor(batch.vectors), atol=1e-5, rtol=1e-4)
    ids = [tok(t)["input_ids"] for t in texts]
    assert batch.prompt_tokens == sum(map(len, ids))
    torch.testing.assert_close(torch.tensor(chat_model.embed(ids, pooling=mode).vectors), torch.tensor(batch.vectors))


async def _aembed(model: ChatModel, text: str, mode: str) -> list[float]:
    # The model's loop is its own: hand the coroutine to it, as a caller on another loop would.
    future = asyncio.run_coroutine_threadsafe(model.aembed(text, pooling=mode), model._loop.loop)
    return (await asyncio.wrap_future(future)).vectors[0]


def test_causal_lm_refusals(chat_model):
    with pytest.raises(InvalidRequestError, match="dimensions") as e:
        chat_model.embed("hi", dimensions=8)
    assert e.value.param == "dimensions"
    with pytest.raises(InvalidRequestError, match="pooling"):
        chat_model.embed("hi", pooling="cls")
    for bad in ([], "", [""], [1, "a"], [[]], [[-1]], {"a": 1}):
        with pytest.raises(InvalidRequestError) as e:
            chat_model.embed(bad)
        assert e.value.param == "input", bad
    with pytest.raises(UnsupportedFeatureError, match="cross-encoder"):
        chat_model.rerank("q", ["d"])


@pytest.mark.parametrize(("key", "value"), [("quantization_bit", 4), ("kv_cache_dtype", "fp8")])
def test_encoders_refuse_quantization_keys(tmp_path, key, value):
    path = embedding_model(tmp_path / "q", "mean")
    with pytest.raises(ConfigError, match=f"{key}: applies to generating and scoring models") as e:
        ChatModel({"model_name_or_path": path, key: value})
    assert e.value.param == key
