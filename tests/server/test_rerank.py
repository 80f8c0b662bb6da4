"""/v1/rerank, /rerank and /v2/rerank against a real `chatplex serve` of a tiny random-weight BERT cross-encoder:
scores equal transformers' own forward on the tokenizer pair + sigmoid; order, top_n, return_documents; bad input
and non-cross-encoders are 400s."""

from __future__ import annotations

import httpx
import pytest

from tests.engines.hf.tiny_bert import cross_encoder, reference_scores
from tests.server.conftest import API_KEY, running_server

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is a city in germany", "the lazy dog", "a cat", "river"]


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory) -> str:
    return cross_encoder(tmp_path_factory.mktemp("ce") / "tiny-ce")


@pytest.fixture(scope="module")
def rhttp(ce_dir, tmp_path_factory):
    with running_server(["--model", ce_dir, "--api-key", API_KEY], tmp_path_factory.mktemp("ce") / "log") as srv:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
            yield c


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_scores_and_order(rhttp, ce_dir, path):
    expected = reference_scores(ce_dir, QUERY, DOCS)
    assert len({round(s, 4) for s in expected}) == len(DOCS)  # the weights separate the documents
    r = rhttp.post(path, json={"model": "tiny-ce", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert [x["index"] for x in results] == sorted(range(len(DOCS)), key=lambda i: -expected[i])
    for x in results:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-5)
        assert x["document"] == {"text": DOCS[x["index"]]}
    assert body["model"] == "tiny-ce" and body["usage"]["total_tokens"] > 0


def test_top_n_and_return_documents(rhttp, ce_dir):
    expected = reference_scores(ce_dir, QUERY, DOCS)
    docs = [{"text": d} for d in DOCS]
    r = rhttp.post("/v1/rerank", json={"query": QUERY, "documents": docs, "top_n": 2, "return_documents": False})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == sorted(range(len(DOCS)), key=lambda i: -expected[i])[:2]
    assert all("document" not in x for x in results)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": [1]}, "documents"),
        ({"query": QUERY}, "documents"),
        ({"query": "", "documents": ["a"]}, "query"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
    ],
)
def test_bad_input(rhttp, body, param):
    r = rhttp.post("/v1/rerank", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param), r.json()


def test_cross_encoder_refuses_embeddings_and_chat(rhttp):
    r = rhttp.post("/v1/embeddings", json={"input": "a"})
    assert r.status_code == 400 and "cross-encoder" in r.json()["error"]["message"], r.text
    r = rhttp.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "cross-encoder" in r.json()["error"]["message"], r.text


def test_generative_model_refuses_rerank(http):
    r = http.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert r.status_code == 400, r.text
    assert "needs a cross-encoder" in r.json()["error"]["message"]
