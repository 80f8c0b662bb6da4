"""The openai engine's embed and rerank against real backends on loopback: `chatplex serve` of a tiny
sentence-transformers BERT and of a tiny BERT cross-encoder (subprocesses), and a tiny Llama served in this process.
The engine's answers equal the backend's own HTTP answers (and transformers' forward); remote errors come back as
chatplex's; `chatplex serve --infer-backend openai` answers the openai SDK's embeddings.create."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch
from tests.engines.hf.tiny_bert import TEXTS, cross_encoder, embedding_model, reference_embeddings, reference_scores
from tests.server.conftest import ServerProcess, running_server, serving_in_thread

from chatplex import ChatModel
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is a city in germany", "the lazy dog", "a cat", "river"]


def _remote(url: str, name: str | None = None) -> ChatModel:
    # Named: a chatplex embedding / cross-encoder server answers /v1/models with a 503 for now (the HF engine's
    # `runner` raises for encoder models), so the engine cannot ask it for the name.
    named = {"model_name_or_path": name} if name else {}
    return ChatModel({"infer_backend": "openai", "api_base": f"{url}/v1", **named})


def _backend_vectors(url: str, body: dict) -> tuple[list[list[float]], int]:
    r = httpx.post(f"{url}/v1/embeddings", json={"encoding_format": "float", **body}, timeout=60)
    assert r.status_code == 200, r.text
    return [d["embedding"] for d in r.json()["data"]], r.json()["usage"]["prompt_tokens"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    return embedding_model(tmp_path_factory.mktemp("st") / "tiny-st", "mean", matryoshka_dimensions=[8, 16, 32])


@pytest.fixture(scope="module")
def st_backend(bert_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    with running_server(["--model", bert_dir], tmp_path_factory.mktemp("st") / "log") as srv:
        yield srv


@pytest.fixture(scope="module")
def st_remote(st_backend) -> Iterator[ChatModel]:
    model = _remote(st_backend.url, "tiny-st")
    yield model
    model.close()


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory) -> str:
    return cross_encoder(tmp_path_factory.mktemp("ce") / "tiny-ce")


@pytest.fixture(scope="module")
def ce_backend(ce_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    with running_server(["--model", ce_dir], tmp_path_factory.mktemp("ce") / "log") as srv:
        yield srv


@pytest.fixture(scope="module")
def ce_remote(ce_backend) -> Iterator[ChatModel]:
    model = _remote(ce_backend.url, "tiny-ce")
    yield model
    model.close()


@pytest.fixture(scope="module")
def lm_backend(tiny_model_dir) -> Iterator[str]:
    """A tiny causal Llama behind chatplex's app, served by uvicorn in a thread of this process."""
    from chatplex.server.app import create_app
    from chatplex.server.settings import ServerSettings

    model = ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32"})
    try:
        with serving_in_thread(create_app(model, ServerSettings())) as url:
            yield url
    finally:
        model.close()


# ---- embeddings ------------------------------------------------------------------------------------------------
def test_embed_equals_backend(st_remote, st_backend, bert_dir):
    got = st_remote.embed(TEXTS)
    vectors, tokens = _backend_vectors(st_backend.url, {"input": TEXTS})
    assert got.vectors == vectors and got.prompt_tokens == tokens > 0
    torch.testing.assert_close(torch.tensor(got.vectors), reference_embeddings(bert_dir, TEXTS, "mean"))


def test_token_ids_and_single_input(st_remote, st_backend, bert_dir):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(bert_dir)(TEXTS[0])["input_ids"]
    assert st_remote.embed(ids).vectors == _backend_vectors(st_backend.url, {"input": ids})[0]
    assert st_remote.embed(TEXTS[2]).vectors == _backend_vectors(st_backend.url, {"input": TEXTS[2]})[0]


def test_dimensions_pass_through(st_remote, st_backend):
    cut = st_remote.embed(["a cat", "hello there"], dimensions=16)
    assert [len(v) for v in cut.vectors] == [16, 16]
    assert cut.vectors == _backend_vectors(st_backend.url, {"input": ["a cat", "hello there"], "dimensions": 16})[0]


def test_async_embed(st_remote):
    async def both():
        return await asyncio.gather(st_remote.aembed("a cat"), st_remote.aembed(["a cat"], dimensions=8))

    full, cut = asyncio.run(both())
    assert full.vectors == st_remote.embed("a cat").vectors and len(cut.vectors[0]) == 8


def test_remote_400_is_invalid_request(st_remote):
    with pytest.raises(InvalidRequestError, match="dimensions") as e:
        st_remote.embed("a cat", dimensions=64)  # more than the model has
    assert e.value.param == "dimensions"
    with pytest.raises(InvalidRequestError) as e:
        st_remote.rerank(QUERY, DOCS)  # an embedding model is no cross-encoder
    assert "does not rerank" in str(e.value)


def test_remote_without_the_route(st_backend):
    model = ChatModel({"infer_backend": "openai", "api_base": f"{st_backend.url}/nowhere", "model_name_or_path": "x"})
    try:
        with pytest.raises(UnsupportedFeatureError, match=f"{st_backend.url}/nowhere.*/embeddings"):
            model.embed("a cat")
        with pytest.raises(UnsupportedFeatureError, match="/rerank"):
            model.rerank(QUERY, DOCS)
    finally:
        model.close()


def test_causal_lm_backend_pooling(lm_backend):
    remote = _remote(lm_backend)
    try:
        texts = ["Hello there", "The quick brown fox"]
        mean = remote.embed(texts, pooling="mean")
        assert mean.vectors == _backend_vectors(lm_backend, {"input": texts, "pooling": "mean"})[0]
        last = remote.embed(texts)
        assert last.vectors == _backend_vectors(lm_backend, {"input": texts})[0] and last.vectors != mean.vectors
        with pytest.raises(InvalidRequestError) as e:
            remote.embed("hi", dimensions=8)  # not a Matryoshka model
        assert e.value.param == "dimensions"
        with pytest.raises(InvalidRequestError) as e:
            remote.embed("hi", pooling="cls")
        assert e.value.param == "pooling"
    finally:
        remote.close()


# ---- rerank ----------------------------------------------------------------------------------------------------
def test_rerank_equals_backend(ce_remote, ce_backend, ce_dir):
    got = ce_remote.rerank(QUERY, DOCS)
    r = httpx.post(f"{ce_backend.url}/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60).json()
    assert [(x.index, x.relevance_score) for x in got.results] == [
        (x["index"], x["relevance_score"]) for x in r["results"]
    ]
    assert [x.text for x in got.results] == [DOCS[x["index"]] for x in r["results"]]
    assert got.prompt_tokens == r["usage"]["prompt_tokens"] > 0
    expected = reference_scores(ce_dir, QUERY, DOCS)
    assert [x.relevance_score for x in got.results] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)


def test_rerank_top_n_and_async(ce_remote):
    full = ce_remote.rerank(QUERY, [{"text": d} for d in DOCS])
    top = asyncio.run(ce_remote.arerank(QUERY, DOCS, top_n=2))
    assert top.results == full.results[:2]


# ---- the openai engine behind `chatplex serve` --------------------------------------------------------------
def test_serve_openai_engine_embeddings(st_backend, bert_dir, tmp_path):
    args = ["--infer-backend", "openai", "--model", "tiny-st", "--set", f"api_base={st_backend.url}/v1"]
    with running_server(args, tmp_path / "front.log") as front:
        client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="none", max_retries=0, timeout=60)
        name = client.models.list().data[0].id
        answer = client.embeddings.create(model=name, input=TEXTS)  # base64, the SDK's default
        vectors, tokens = _backend_vectors(st_backend.url, {"input": TEXTS})
        torch.testing.assert_close(torch.tensor([d.embedding for d in answer.data]), torch.tensor(vectors))
        assert answer.usage.prompt_tokens == tokens
        cut = client.embeddings.create(model=name, input="a cat", dimensions=8, encoding_format="float")
        assert len(cut.data[0].embedding) == 8
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model=name, input="a cat", dimensions=64)
        assert e.value.body["param"] == "dimensions"
