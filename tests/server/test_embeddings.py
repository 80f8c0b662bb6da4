"""/v1/embeddings against real `chatplex serve` processes: a tiny sentence-transformers BERT through the openai SDK
(base64, its default, and float; Matryoshka dimensions), and the embedded causal LM's pooled hidden states through
httpx, each compared with transformers' own forward pooled in the test."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import torch

from tests.engines.hf.tiny_bert import TEXTS, embedding_model, reference_embeddings
from tests.server.conftest import API_KEY, running_server


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    return embedding_model(tmp_path_factory.mktemp("st") / "tiny-st", "mean", matryoshka_dimensions=[8, 16, 32])


@pytest.fixture(scope="module")
def st_server(bert_dir, tmp_path_factory):
    with running_server(["--model", bert_dir, "--api-key", API_KEY], tmp_path_factory.mktemp("st") / "log") as srv:
        yield srv


@pytest.fixture(scope="module")
def st_client(st_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{st_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_openai_sdk_base64_and_float(st_client, bert_dir):
    expected = reference_embeddings(bert_dir, TEXTS, "mean")
    default = st_client.embeddings.create(model="tiny-st", input=TEXTS)  # the SDK asks for base64
    assert [d.index for d in default.data] == list(range(len(TEXTS))) and default.model == "tiny-st"
    torch.testing.assert_close(torch.tensor([d.embedding for d in default.data]), expected, atol=1e-5, rtol=1e-4)
    assert default.usage.prompt_tokens == default.usage.total_tokens == sum(len(t.split()) + 2 for t in TEXTS)
    floats = st_client.embeddings.create(model="tiny-st", input=TEXTS[1], encoding_format="float")
    # alone vs in a padded batch of four: the same up to float32 rounding of differently shaped matmuls
    assert floats.data[0].embedding == pytest.approx(default.data[1].embedding, abs=1e-6)


def test_raw_base64_is_little_endian_float32(st_server):
    body = {"input": ["a cat", "hello there"], "encoding_format": "base64"}
    r = httpx.post(f"{st_server.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    floats = httpx.post(
        f"{st_server.url}/v1/embeddings", json={**body, "encoding_format": "float"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()
    assert r.status_code == 200, r.text
    for got, want in zip(r.json()["data"], floats["data"]):
        decoded = np.frombuffer(base64.b64decode(got["embedding"]), dtype="<f4")
        assert decoded.tolist() == pytest.approx(want["embedding"], abs=1e-7)


def test_dimensions(st_client):
    full = torch.tensor(st_client.embeddings.create(model="tiny-st", input="a cat").data[0].embedding)
    cut = st_client.embeddings.create(model="tiny-st", input="a cat", dimensions=16).data[0].embedding
    assert len(cut) == 16
    torch.testing.assert_close(torch.tensor(cut), torch.nn.functional.normalize(full[:16], dim=0))
    for dims in (64, 12, 0):
        with pytest.raises(openai.BadRequestError) as e:
            st_client.embeddings.create(model="tiny-st", input="a cat", dimensions=dims)
        assert e.value.body["param"] == "dimensions", dims


def test_token_id_input(st_client, bert_dir):
    from transformers import AutoTokenizer

    ids = [AutoTokenizer.from_pretrained(bert_dir)(t)["input_ids"] for t in TEXTS[:2]]
    by_ids = st_client.embeddings.create(model="tiny-st", input=ids, encoding_format="float")
    by_text = st_client.embeddings.create(model="tiny-st", input=TEXTS[:2], encoding_format="float")
    torch.testing.assert_close(
        torch.tensor([d.embedding for d in by_ids.data]), torch.tensor([d.embedding for d in by_text.data])
    )
    single = st_client.embeddings.create(model="tiny-st", input=ids[0], encoding_format="float")
    assert single.data[0].embedding == pytest.approx(by_text.data[0].embedding, abs=1e-6)


@pytest.mark.parametrize(
    "body", [{"input": []}, {"input": ""}, {"input": [""]}, {"input": 5}, {"input": [[1], "a"]}, {}, {"input": [[]]}]
)
def test_bad_input(st_server, body):
    r = httpx.post(f"{st_server.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith("input"), r.json()


def test_embedding_model_refuses_chat(st_client):
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        st_client.chat.completions.create(model="tiny-st", messages=[{"role": "user", "content": "hi"}])


# ---- the served causal LM (the session's SmolLM2 server) ------------------------------------------------------
def _reference_lm(texts: list[str], mode: str) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    from chatplex.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    model = AutoModel.from_pretrained(embedded_model_dir(), dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = [model(**tok(t, return_tensors="pt")).last_hidden_state[0] for t in texts]
    pooled = torch.stack([h[-1] if mode == "last" else h.mean(0) for h in hidden])
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.mark.parametrize("mode", ["last", "mean"])
def test_causal_lm_embeddings(http, mode):
    texts = ["Hello there", "The quick brown fox jumps over the lazy dog", "x"]
    body = {"input": texts, "encoding_format": "float", **({"pooling": mode} if mode != "last" else {})}
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    batch = torch.tensor([d["embedding"] for d in r.json()["data"]])
    torch.testing.assert_close(batch, _reference_lm(texts, mode), atol=1e-4, rtol=1e-3)
    alone = [http.post("/v1/embeddings", json={**body, "input": t}).json()["data"][0]["embedding"] for t in texts]
    torch.testing.assert_close(torch.tensor(alone), batch, atol=1e-5, rtol=1e-4)


def test_causal_lm_refusals(http):
    r = http.post("/v1/embeddings", json={"input": "hi", "dimensions": 8})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions", r.text
    r = http.post("/v1/embeddings", json={"input": "hi", "pooling": "cls"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "pooling", r.text
    r = http.post("/v1/embeddings", json={"input": [[10**9]]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    r = http.post("/v1/embeddings", json={"input": "hi", "prompt_name": "query"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_name", r.text


def test_embedding_model_is_listed(st_client):
    """/v1/models on an embedding model (no decoder runner, no adapters): the model's card, not a 503."""
    [card] = st_client.models.list().data
    assert card.id and card.max_model_len
