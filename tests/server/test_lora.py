"""LoRA adapters through a real `chatplex serve`: listed in /v1/models with their parent, loaded and unloaded
at run time with vLLM's endpoints (behind the API key), unknown names -> 404 in OpenAI's error shape."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from tests.server.conftest import API_KEY, running_server


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, name in ((7, "a1"), (8, "a2")):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        path = tmp_path_factory.mktemp(f"srv-lora-{name}")
        model.save_pretrained(path)
        out[name] = str(path)
    return out


@pytest.fixture(scope="module")
def lora_server(tiny_model_dir, adapter_dirs, tmp_path_factory):
    with running_server(
        ["--model", tiny_model_dir, "--infer-dtype", "float32", "--api-key", API_KEY, "--served-model-name", "base",
         "--lora-modules", f"a1={adapter_dirs['a1']}", "--max-loras", "2"],
        tmp_path_factory.mktemp("lora-srv") / "server.log",
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def lhttp(lora_server):
    with httpx.Client(base_url=lora_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def test_models_lists_adapters_with_parent(lora_server):
    client = openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key=API_KEY, max_retries=0)
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"base", "a1"}
    assert cards["a1"].parent == "base" and cards["a1"].root
    assert client.models.retrieve("a1").id == "a1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_load_and_unload_at_run_time(lhttp, adapter_dirs):
    assert httpx.post(lhttp.base_url.join("/v1/load_lora_adapter"),
                      json={"lora_name": "a2", "lora_path": adapter_dirs["a2"]}).status_code == 401
    r = lhttp.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": adapter_dirs["a2"]})
    assert r.status_code == 200 and "a2" in r.text
    assert {m["id"] for m in lhttp.get("/v1/models").json()["data"]} == {"base", "a1", "a2"}
    again = lhttp.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": adapter_dirs["a2"]})
    assert again.status_code == 400 and "already loaded" in again.json()["error"]["message"]
    r = lhttp.post("/v1/unload_lora_adapter", json={"lora_name": "a2"})
    assert r.status_code == 200 and "removed" in r.text
    assert {m["id"] for m in lhttp.get("/v1/models").json()["data"]} == {"base", "a1"}


def test_unknown_adapter_is_404(lhttp):
    r = lhttp.post("/v1/unload_lora_adapter", json={"lora_name": "nope"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "lora_name" and "nope" in err["message"]
    r = lhttp.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_bad_adapter_path_is_400(lhttp, tmp_path):
    r = lhttp.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(tmp_path)})
    assert r.status_code == 400 and "adapter_config.json" in r.json()["error"]["message"]
    r = lhttp.post("/v1/load_lora_adapter", json={"lora_name": "base", "lora_path": str(tmp_path)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora_name"


def test_model_field_selects_the_adapter(lora_server, tiny_model_dir, adapter_dirs):
    """A chat request's `model` naming an adapter runs that adapter: the same tokens as the Python API with it."""
    from chatplex import ChatModel

    client = openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key=API_KEY, max_retries=0)
    messages = [{"role": "user", "content": "Hello there"}]

    def served(model: str) -> str:
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
        return r.choices[0].message.content

    with ChatModel({"model_name_or_path": tiny_model_dir, "infer_dtype": "float32",
                    "lora_modules": {"a1": adapter_dirs["a1"]}}) as local:
        def direct(adapter: str | None) -> str:
            return local.chat(messages, max_new_tokens=12, temperature=0, ignore_eos=True, adapter=adapter)[0].response_text

        assert served("a1") == direct("a1")
        assert served("base") == direct(None)
    assert served("a1") != served("base")
    completion = client.completions.create(model="a1", prompt="Once upon", max_tokens=8, temperature=0)
    assert completion.choices[0].text
