"""/v1/score, LLaMA-Factory's /v1/score/evaluation and vLLM's /classify against a real `chatplex serve` of a
tiny random-weight reward model; a generative model answers score requests with 400 and vice versa."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from chatplex import ChatModel
from tests.server.conftest import API_KEY, running_server

TEXTS = ["Hello there", "The quick brown fox jumps over the lazy dog", "x"]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tokenizer) -> str:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(5)
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=49152, max_position_embeddings=2048, eos_token_id=2, bos_token_id=1, pad_token_id=2, num_labels=1,
    )
    path = tmp_path_factory.mktemp("tiny-reward")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def expected(reward_dir) -> list[float]:
    """The same model's scores in-process (equal to a direct torch computation: tests/engines/hf/test_scoring.py)."""
    with ChatModel({"model_name_or_path": reward_dir, "infer_dtype": "float32"}) as model:
        return model.get_scores(TEXTS)


@pytest.fixture(scope="module")
def reward_server(reward_dir, tmp_path_factory):
    with running_server(["--model", reward_dir, "--infer-dtype", "float32", "--api-key", API_KEY],
                        tmp_path_factory.mktemp("rm") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def rhttp(reward_server):
    with httpx.Client(base_url=reward_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def test_score(rhttp, expected):
    r = rhttp.post("/v1/score", json={"input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-5)
    single = rhttp.post("/v1/score", json={"input": TEXTS[1]}).json()
    assert single["data"][0]["score"] == pytest.approx(expected[1], abs=1e-5)


def test_score_conversations(rhttp, tokenizer):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    r = rhttp.post("/v1/score", json={"input": [conv, conv]})
    assert r.status_code == 200, r.text
    a, b = (d["score"] for d in r.json()["data"])
    rendered = rhttp.post("/v1/score", json={"input": [tokenizer.apply_chat_template(conv, tokenize=False)]})
    # Equal up to float noise: rows of one batch can go through different CPU GEMM blocks.
    assert math.isfinite(a) and a == pytest.approx(b, abs=1e-5)
    assert rendered.json()["data"][0]["score"] == pytest.approx(a, abs=1e-5)


def test_score_evaluation_llamafactory_shape(rhttp, expected):
    r = rhttp.post("/v1/score/evaluation", json={"model": "anything", "messages": TEXTS, "max_length": 512})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "model", "scores"} and body["object"] == "score.evaluation"
    assert body["scores"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("path", ["/classify", "/v1/classify"])
def test_classify_vllm_shape(rhttp, expected, path):
    r = rhttp.post(path, json={"model": None, "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["usage"]["prompt_tokens"] > 0
    probs = [d["probs"][0] for d in body["data"]]
    assert probs == pytest.approx([1 / (1 + math.exp(-s)) for s in expected], abs=1e-6)
    assert {d["num_classes"] for d in body["data"]} == {1} and body["data"][0]["label"] == "LABEL_0"
    raw = rhttp.post(path, json={"input": TEXTS[0], "use_activation": False}).json()
    assert raw["data"][0]["probs"] == pytest.approx([expected[0]], abs=1e-5)


def test_reward_model_refuses_chat(reward_server):
    client = openai.OpenAI(base_url=f"{reward_server.url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="reward model"):
        client.chat.completions.create(model=client.models.list().data[0].id,
                                       messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_classify_truncates_like_vllm(rhttp, reward_dir, tokenizer):
    """truncate_prompt_tokens keeps the last k tokens (vLLM's meaning); -1 is the model's whole context."""
    ids = tokenizer.encode(TEXTS[1], add_special_tokens=False)
    tail = tokenizer.decode(ids[-4:])
    assert tokenizer.encode(tail, add_special_tokens=False) == ids[-4:] and len(ids) > 4
    with ChatModel({"model_name_or_path": reward_dir, "infer_dtype": "float32"}) as model:
        tail_score, whole_score = model.get_scores([tail, TEXTS[1]])
    for k, want in ((4, tail_score), (-1, whole_score)):
        body = rhttp.post("/classify", json={"input": TEXTS[1], "truncate_prompt_tokens": k,
                                             "use_activation": False}).json()
        assert body["data"][0]["probs"] == pytest.approx([want], abs=1e-5), k
        assert body["usage"]["prompt_tokens"] == (4 if k == 4 else len(ids))
    r = rhttp.post("/classify", json={"input": "a", "truncate_prompt_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncate_prompt_tokens"


def test_bad_score_requests(rhttp):
    assert rhttp.post("/v1/score", json={"input": [1, 2]}).status_code == 400
    r = rhttp.post("/v1/score", json={"input": ["a"], "max_length": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_length"
    # Errors name the request's own fields, not the Python API's `batch_input`.
    r = rhttp.post("/v1/score", json={"input": ["fine", ""]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    assert r.json()["error"]["message"].startswith("input[1]")
    r = rhttp.post("/v1/score/evaluation", json={"model": "m", "messages": ["", "x"]})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("messages[0]"), r.text
    assert httpx.post(rhttp.base_url.join("/classify"), json={"input": "a"}).status_code == 401


def test_generative_model_refuses_scores(http):
    """The shared SmolLM2 server (a generative model) answers every score shape with a clear 400."""
    for path, body in (("/v1/score", {"input": "hi"}), ("/v1/score/evaluation", {"messages": ["hi"]}),
                       ("/classify", {"input": "hi"})):
        r = http.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        assert "not a reward model" in r.json()["error"]["message"]


def test_openapi_documents_score(rhttp):
    schema = rhttp.get("/openapi.json").json()
    assert "/v1/score" in schema["paths"] and "/classify" in schema["paths"]
    assert "ScoreInputRequest" in schema["components"]["schemas"]


def test_llamafactory_value_head_through_the_server(tmp_path, tokenizer):
    """LLaMA-Factory's reward format (a causal LM + value_head.safetensors) served with `stage: rm`, as its YAML says."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(6)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=49152, max_position_embeddings=2048, eos_token_id=2,
                         bos_token_id=1, pad_token_id=2)
    path = tmp_path / "vh"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    save_file({"v_head.summary.weight": torch.randn(1, 64), "v_head.summary.bias": torch.randn(1)},
              str(path / "value_head.safetensors"))
    (tmp_path / "rm.yaml").write_text(f"model_name_or_path: {path}\nstage: rm\nfinetuning_type: lora\n"
                                      "infer_dtype: float32\n")
    with ChatModel(str(tmp_path / "rm.yaml")) as model:
        expected = model.get_scores(TEXTS)
    assert len({round(x, 4) for x in expected}) == len(TEXTS)
    with running_server([str(tmp_path / "rm.yaml")], tmp_path / "server.log") as srv:
        body = httpx.post(f"{srv.url}/v1/score/evaluation", json={"model": "m", "messages": TEXTS}, timeout=60).json()
        assert body["scores"] == pytest.approx(expected, abs=1e-5)
