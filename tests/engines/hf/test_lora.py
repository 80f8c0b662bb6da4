"""LoRA adapters on the HF engine: one step mixing two adapters and the base model gives each request what a
single-adapter run gives (greedy, against peft + `model.generate`); merged and default adapters; load and
unload at run time; limits and unknown names."""

from __future__ import annotations

import asyncio

import pytest
import torch

from chatplex import ChatModel
from chatplex.config import load_args
from chatplex.errors import ConfigError, InvalidRequestError, NotFoundError
from tests.engines.hf.greedy import request_tokens

PROMPTS = ["Hi", "The quick brown fox jumps over the lazy dog", "One two three four five six seven", "x"]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = {}
    for seed, name in ((3, "a1"), (4, "a2")):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
        config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                            init_lora_weights=False)
        path = tmp_path_factory.mktemp(f"lora-{name}")
        get_peft_model(base, config).save_pretrained(path)
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="module")
def references(tiny_model_dir, adapters) -> dict[str | None, list[list[int]]]:
    """Greedy tokens per prompt from peft + model.generate, one adapter at a time (None: the base model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir("llama")
    tok = AutoTokenizer.from_pretrained(path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), adapters["a1"],
                                      adapter_name="a1")
    model.load_adapter(adapters["a2"], adapter_name="a2")
    model.eval()
    out: dict[str | None, list[list[int]]] = {}
    for name in (None, "a1", "a2"):
        rows = []
        for prompt in PROMPTS:
            ids = tok(prompt, return_tensors="pt")
            kw = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
            if name is None:
                with model.disable_adapter():
                    gen = model.generate(**ids, **kw)
            else:
                model.set_adapter(name)
                gen = model.generate(**ids, **kw)
            rows.append(gen[0, ids["input_ids"].shape[1]:].tolist())
        out[name] = rows
    assert out["a1"] != out[None] and out["a2"] != out[None]  # the adapters change the output
    return out


async def _tokens(model: ChatModel, prompt: str, adapter: str | None) -> list[int]:
    return await request_tokens(model, prompt, NEW_TOKENS, adapter)


@pytest.mark.parametrize("engine_args", [{}, {"max_num_batched_tokens": 8, "kv_block_size": 4}], ids=["plain", "chunked"])
async def test_mixed_adapter_batch_equals_separate_runs(tiny_model_dir, adapters, references, engine_args):
    args = {"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32", "lora_modules": adapters,
            **engine_args}
    with ChatModel(args) as model:
        assert sorted(model.adapters) == ["a1", "a2"]
        jobs = [(name, i) for name in (None, "a1", "a2") for i in range(len(PROMPTS))]
        got = await asyncio.gather(*(_tokens(model, PROMPTS[i], name) for name, i in jobs))
        for (name, i), tokens in zip(jobs, got):
            assert tokens == references[name][i], (name, PROMPTS[i])
        assert model.stats().max_batch_size >= 6  # the three kinds of request really shared steps


@pytest.mark.parametrize("merge", [True, False])
async def test_adapter_name_or_path_serves_requests_naming_none(tiny_model_dir, adapters, references, merge):
    args = {"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32",
            "adapter_name_or_path": adapters["a1"], "merge_lora": merge}
    with ChatModel(args) as model:
        assert model.adapters == []
        got = await asyncio.gather(*(_tokens(model, p, None) for p in PROMPTS))
        assert got == references["a1"]


async def test_load_and_unload_at_run_time(tiny_model_dir, adapters, references):
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32", "max_loras": 1}) as model:
        with pytest.raises(NotFoundError, match="a2"):
            await _tokens(model, PROMPTS[0], "a2")
        await model.aload_adapter("a2", adapters["a2"])
        assert model.adapters == ["a2"]
        got = await asyncio.gather(*(_tokens(model, p, a) for p in PROMPTS for a in ("a2", None)))
        assert got[0::2] == references["a2"] and got[1::2] == references[None]
        with pytest.raises(InvalidRequestError, match="already loaded"):
            await model.aload_adapter("a2", adapters["a2"])
        with pytest.raises(InvalidRequestError, match="max_loras"):
            await model.aload_adapter("a1", adapters["a1"])
        await model.aunload_adapter("a2")
        assert model.adapters == []
        with pytest.raises(NotFoundError):
            await _tokens(model, PROMPTS[0], "a2")
        with pytest.raises(NotFoundError):
            await model.aunload_adapter("a2")
        await model.aload_adapter("a1", adapters["a1"])  # the slot is free again
        assert await _tokens(model, PROMPTS[1], "a1") == references["a1"][1]


def test_bad_adapter_paths(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json"):
        ChatModel({"model_name_or_path": tiny_model_dir("llama"), "lora_modules": {"x": str(tmp_path)}})


async def test_adapter_on_the_output_layer_is_refused_and_nothing_stays(tiny_model_dir, adapters, tmp_path):
    """The runner computes logits for each sequence's last token only, so a per-request lm_head LoRA is refused;
    the failed load leaves the model serving its other adapters as before."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "lm_head"], init_lora_weights=False)).save_pretrained(
        tmp_path / "head")
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32",
                    "lora_modules": {"a1": adapters["a1"]}}) as model:
        before = await _tokens(model, PROMPTS[1], "a1")
        with pytest.raises(ConfigError, match="targets lm_head, the output layer"):
            await model.aload_adapter("head", str(tmp_path / "head"))
        assert model.adapters == ["a1"] and await _tokens(model, PROMPTS[1], "a1") == before


def test_lora_modules_forms():
    assert load_args({"lora_modules": "a=/p, b=/q"}).model.lora_modules == {"a": "/p", "b": "/q"}
    assert load_args({"lora_modules": ["a=/p"]}).model.lora_modules == {"a": "/p"}
    assert load_args({"lora_modules": {"a": "/p"}}).model.lora_modules == {"a": "/p"}
    vllm_json = '{"name": "a", "path": "/p", "base_model_name": "m"}'
    assert load_args({"lora_modules": [vllm_json, "b=/q"]}).model.lora_modules == {"a": "/p", "b": "/q"}
    with pytest.raises(ConfigError, match="lora_modules"):
        load_args({"lora_modules": "nopath"})
    with pytest.raises(ConfigError, match="lora_modules: .*'name' and 'path'"):
        load_args({"lora_modules": ['{"name": "a"}']})
    with pytest.raises(ConfigError, match="lora_modules: .*not valid JSON"):
        load_args({"lora_modules": ['{"name": ']})


def test_lora_flags_on_the_command_line():
    import argparse

    from chatplex.cli.options import add_model_options, model_args_from

    parser = argparse.ArgumentParser()
    add_model_options(parser)
    ns = parser.parse_args(["--lora-modules", "a=/p", '{"name": "b", "path": "/q"}', "--lora-modules", "c=/r",
                            "--max-loras", "3"])
    config = load_args(model_args_from(ns))
    assert config.model.lora_modules == {"a": "/p", "b": "/q", "c": "/r"} and config.model.max_loras == 3
    with pytest.raises(ConfigError, match="max_loras"):
        load_args({"lora_modules": "a=/p,b=/q", "max_loras": 1})
    with pytest.raises(ConfigError, match="merge_lora"):
        load_args({"adapter_name_or_path": "/p,/q", "merge_lora": False})
    assert load_args({"stage": "rm"}).model.task == "score"


async def test_load_at_run_time_on_packed_bfloat16_layers(tiny_model_dir, adapters):
    """On a CPU in bfloat16 the engine packs its linear layers for oneDNN; an adapter loaded later gets plain ones
    back (peft wraps only nn.Linear) and answers as an engine started with it resident, the base model as before."""
    from chatplex.engines.hf import packed_linear

    args = {"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "bfloat16"}
    with ChatModel({**args, "lora_modules": {"a2": adapters["a2"]}}) as resident:
        expected = await asyncio.gather(*(_tokens(resident, p, a) for p in PROMPTS for a in ("a2", None)))
    with ChatModel(args) as model:
        layers = model.engine.parts.model.model.layers
        packed = isinstance(layers[0].self_attn.o_proj, packed_linear.PackedLinear)
        assert packed == packed_linear.supported(torch.device("cpu"), torch.bfloat16)
        base_before = await asyncio.gather(*(_tokens(model, p, None) for p in PROMPTS))
        await model.aload_adapter("a2", adapters["a2"])
        got = await asyncio.gather(*(_tokens(model, p, a) for p in PROMPTS for a in ("a2", None)))
    assert got == expected
    assert got[1::2] == base_before


async def test_an_adapter_loaded_into_a_compiled_cpu_engine_runs_eagerly(tiny_model_dir, adapters):
    """`compile: true` on a CPU bakes the weights into its step, which checks no module for changes: an adapter
    loaded at run time drops those steps (they run eagerly after), and the engine answers as one started with
    the adapter resident, the base model as before."""
    from chatplex.engines.hf.cpu_decode import CompiledCpuDecode

    # float32 and one prompt at a time: compiled bf16 kernels round differently per batch size
    keys = {"model_name_or_path": tiny_model_dir("llama"), "device": "cpu", "infer_dtype": "float32"}
    with ChatModel({**keys, "lora_modules": {"a2": adapters["a2"]}}) as resident:
        expected = [await _tokens(resident, p, a) for p in PROMPTS for a in ("a2", None)]
    with ChatModel({**keys, "compile": True}) as model:
        assert isinstance(model.engine.runner.graphs, CompiledCpuDecode)
        base_before = [await _tokens(model, p, None) for p in PROMPTS]
        await model.aload_adapter("a2", adapters["a2"])
        assert model.engine.runner.graphs is None and model.engine.runner.prefill is None
        got = [await _tokens(model, p, a) for p in PROMPTS for a in ("a2", None)]
    assert got == expected
    assert got[1::2] == base_before


async def test_cached_prefixes_are_per_adapter(tiny_model_dir, adapters, references):
    """The prefix cache keys blocks by adapter: the same prompt under each adapter, one after another (each run
    could find the earlier ones' blocks), gives each adapter's own tokens; a name unloaded and loaded again with
    other weights finds nothing of the old adapter's."""
    long_prompt = PROMPTS[1]
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32", "lora_modules": adapters,
                    "kv_block_size": 4}) as model:
        for name in (None, "a1", "a2", "a1", None):
            assert await _tokens(model, long_prompt, name) == references[name][1], name
        assert model.stats().prefix_cache_hits > 0  # the repeats found their own adapter's blocks
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32",
                    "kv_block_size": 4}) as model:
        await model.aload_adapter("x", adapters["a1"])
        assert await _tokens(model, long_prompt, "x") == references["a1"][1]
        await model.aunload_adapter("x")
        await model.aload_adapter("x", adapters["a2"])
        assert await _tokens(model, long_prompt, "x") == references["a2"][1]


def test_embeddings_use_an_unmerged_default_adapter(tiny_model_dir, adapters):
    """/v1/embeddings of a model serving with adapter_name_or_path unmerged (merge_lora false, or any quantized
    model) are the adapted model's, as with the adapter merged."""
    args = {"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32",
            "adapter_name_or_path": adapters["a1"]}
    texts = PROMPTS[:3]
    with ChatModel(args) as merged:
        expected = torch.tensor(merged.embed(texts).vectors)
    with ChatModel({**args, "merge_lora": False}) as live:
        got = torch.tensor(live.embed(texts).vectors)
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32"}) as base:
        plain = torch.tensor(base.embed(texts).vectors)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-3)
