"""Quantized weights on the HF engine (CPU): LLaMA-Factory's on-the-fly keys (bitsandbytes 4- and 8-bit), a saved
bitsandbytes checkpoint, and a LoRA adapter over quantized weights (QLoRA inference), each greedy-equal to
transformers' own `generate` on the same quantized model; the refusals name the key and the fix."""

from __future__ import annotations

import asyncio

import pytest
import torch

from chatplex import ChatModel
from chatplex.config import args_from_dict
from chatplex.engines.hf import quantization
from chatplex.errors import ConfigError
from tests.engines.hf.quantized_checkpoints import write_fp8_checkpoint
from tests.engines.hf.greedy import engine_tokens, generate_tokens

pytest.importorskip("bitsandbytes")

PROMPTS = ["Hi", "The quick brown fox jumps over the lazy dog", "One two three four five six seven", "x"]
NEW_TOKENS = 8
SETTINGS = {
    "4bit-nf4": {"quantization_bit": 4},
    "4bit-fp4-single": {"quantization_bit": 4, "quantization_type": "fp4", "double_quantization": False},
    "8bit": {"quantization_bit": 8},
}


def _bnb_config(keys: dict, dtype: torch.dtype):
    """LLaMA-Factory's BitsAndBytesConfig for these keys (model/model_utils/quantization.py)."""
    from transformers import BitsAndBytesConfig

    if keys["quantization_bit"] == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=keys.get("double_quantization", True),
                              bnb_4bit_quant_type=keys.get("quantization_type", "nf4"))


def _generate(model, tok, prompts: list[str]) -> list[list[int]]:
    return generate_tokens(model, tok, prompts, NEW_TOKENS)


async def _engine_tokens(model: ChatModel, prompts: list[str], adapter: str | None = None) -> list[list[int]]:
    return await engine_tokens(model, prompts, NEW_TOKENS, adapter)


@pytest.mark.parametrize("name", list(SETTINGS))
async def test_on_the_fly_bitsandbytes_equals_generate(tiny_model_dir, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, keys = tiny_model_dir("llama"), SETTINGS[name]
    reference = AutoModelForCausalLM.from_pretrained(path, quantization_config=_bnb_config(keys, torch.float32),
                                                     device_map="cpu", dtype=torch.float32)
    expected = _generate(reference, AutoTokenizer.from_pretrained(path), PROMPTS)
    with ChatModel({"model_name_or_path": path, "infer_dtype": "float32", **keys}) as model:
        layer = model.engine.parts.model.model.layers[0].self_attn.q_proj
        assert type(layer).__module__.startswith("bitsandbytes")  # the weights really are quantized
        # LLM.int8's outlier split cannot be captured in a CUDA graph: a GPU runs 8-bit steps eagerly
        assert quantization.graph_safe(model.engine.parts.model) == (keys["quantization_bit"] == 4)
        assert await _engine_tokens(model, PROMPTS) == expected  # all four in one batch
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():  # the reference is not the plain model (8-bit's greedy tokens may still agree with it)
        assert not torch.allclose(reference(ids).logits, plain(ids).logits, atol=1e-4)


async def test_saved_bitsandbytes_checkpoint_loads_as_it_is(tiny_model_dir, tmp_path, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir("llama")
    quantized = AutoModelForCausalLM.from_pretrained(path, quantization_config=_bnb_config({"quantization_bit": 4},
                                                     torch.float32), device_map="cpu", dtype=torch.float32)
    quantized.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu", dtype=torch.float32)
    expected = _generate(reloaded, AutoTokenizer.from_pretrained(path), PROMPTS)
    # quantization_bit is ignored for a checkpoint quantized already, with a warning (LLaMA-Factory's rule)
    with ChatModel({"model_name_or_path": str(tmp_path), "infer_dtype": "float32", "quantization_bit": 8}) as model:
        assert await _engine_tokens(model, PROMPTS) == expected
    assert "quantization_bit 8 is ignored" in caplog.text


@pytest.fixture(scope="module")
def qlora_adapter(tiny_model_dir, tmp_path_factory) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("qlora")
    get_peft_model(base, config).save_pretrained(path)
    return str(path)


async def test_qlora_adapter_stays_live_over_quantized_weights(tiny_model_dir, qlora_adapter):
    """LLaMA-Factory's QLoRA inference: the adapter on the 4-bit model, not merged; per request too (lora_modules),
    beside requests for the base model in the same steps."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir("llama")
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=_bnb_config({"quantization_bit": 4},
                                                torch.float32), device_map="cpu", dtype=torch.float32)
    plain = _generate(base, tok, PROMPTS)
    with_adapter = _generate(PeftModel.from_pretrained(base, qlora_adapter).eval(), tok, PROMPTS)
    assert with_adapter != plain
    keys = {"model_name_or_path": path, "infer_dtype": "float32", "quantization_bit": 4}
    with ChatModel({**keys, "adapter_name_or_path": qlora_adapter}) as model:  # merge_lora defaults to true
        assert await _engine_tokens(model, PROMPTS) == with_adapter
    with ChatModel({**keys, "lora_modules": {"mine": qlora_adapter}}) as model:
        both = await asyncio.gather(_engine_tokens(model, PROMPTS, "mine"), _engine_tokens(model, PROMPTS))
        assert list(both) == [with_adapter, plain]


@pytest.mark.parametrize(("keys", "param", "says"), [
    ({"quantization_bit": 8, "batch_invariant": True, "infer_dtype": "bfloat16"}, "batch_invariant",
     "not with quantized weights"),
    ({"quantization_bit": 8, "quantization_method": "eetq", "device": "cpu"}, "quantization_method", "GPU only"),
])
def test_quantized_combinations_refused_at_start(tiny_model_dir, keys, param, says):
    with pytest.raises(ConfigError, match=says) as e:
        ChatModel({"model_name_or_path": tiny_model_dir("llama"), **keys})
    assert e.value.param == param


def test_quantized_model_takes_one_adapter(tiny_model_dir, qlora_adapter):
    keys = {"model_name_or_path": tiny_model_dir("llama"), "quantization_bit": 4,
            "adapter_name_or_path": f"{qlora_adapter},{qlora_adapter}"}
    with pytest.raises(ConfigError, match="a quantized model takes one adapter") as e:
        ChatModel(keys)
    assert e.value.param == "adapter_name_or_path"


@pytest.mark.parametrize(("keys", "param", "says"), [
    ({"quantization_bit": 3}, "quantization_bit", "4 or 8 bits"),
    ({"quantization_bit": 4, "quantization_method": "hqq"}, "quantization_method", "use bnb"),
    ({"quantization_bit": 4, "quantization_method": "eetq"}, "quantization_bit", "8-bit only"),
    ({"quantization_bit": 4, "quantization_method": "gptq"}, "quantization_method", "load as they are"),
    ({"quantization_method": "int3"}, "quantization_method", "choose one of bnb, eetq, hqq"),
    ({"quantization_type": "int4"}, "quantization_type", "nf4 or fp4"),
    ({"quantization_device_map": "auto"}, "quantization_device_map", "one device"),
    ({"quantization_bit": 4, "infer_backend": "vllm"}, "quantization_bit", "pre-quantized checkpoint"),
    ({"quantization_bit": 4, "dummy_weights": "smollm2-135m"}, "quantization_bit", "dummy_weights"),
    ({"kv_cache_dtype": "int8"}, "kv_cache_dtype", "fp8_e5m2"),
    ({"kv_cache_dtype": "fp8", "infer_backend": "llama.cpp"}, "kv_cache_dtype", "type_k"),
])
def test_bad_quantization_keys_name_the_key_and_the_fix(keys, param, says):
    with pytest.raises(ConfigError, match=says) as e:
        args_from_dict(keys)
    assert e.value.param == param


def test_llamafactory_inference_yaml_keys_load():
    """The keys of a LLaMA-Factory QLoRA inference YAML, as its examples write them (command-line strings too)."""
    args = args_from_dict({"quantization_bit": "4", "quantization_method": "bnb", "quantization_type": "nf4",
                           "double_quantization": "false"}).model
    assert (args.quantization_bit, args.double_quantization) == (4, False)


async def test_fp8_checkpoint_loads_as_transformers_loads_it(tiny_model_dir, tmp_path):
    """A pre-quantized FP8 checkpoint on a CPU loads dequantized, as transformers loads it (on a GPU with float8
    tensor cores it keeps its float8 weights: test_fp8_matmul.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir("llama")
    write_fp8_checkpoint(path, tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu", dtype=torch.bfloat16)
    expected = _generate(reference, AutoTokenizer.from_pretrained(path), PROMPTS)
    with ChatModel({"model_name_or_path": str(tmp_path), "infer_dtype": "bfloat16"}) as model:
        assert not quantization.is_quantized(model.engine.parts.model)  # dequantized: a CPU has no float8 matmul
        got = await _engine_tokens(model, PROMPTS[:1])
        got += [(await _engine_tokens(model, [p]))[0] for p in PROMPTS[1:]]  # one at a time: bf16 batches round
    assert got == expected


@pytest.mark.parametrize("scheme", ["w4a16", "w8a16", "fp8"])
async def test_compressed_tensors_checkpoint_equals_generate(tiny_model_dir, tmp_path, scheme):
    """llm-compressor's format (vLLM's for GPTQ-style int4, int8 and FP8 models): loaded decompressed, greedy-equal
    to transformers' `generate` on the same checkpoint (which decompresses it at its first step)."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.engines.hf.quantized_checkpoints import write_compressed_tensors_checkpoint

    path = tiny_model_dir("llama")
    write_compressed_tensors_checkpoint(path, tmp_path, scheme)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu", dtype=torch.float32)
    expected = _generate(reference, AutoTokenizer.from_pretrained(path), PROMPTS)
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert _generate(plain, AutoTokenizer.from_pretrained(path), PROMPTS) != expected  # the rounding shows
    with ChatModel({"model_name_or_path": str(tmp_path), "infer_dtype": "float32"}) as model:
        assert await _engine_tokens(model, PROMPTS) == expected
    if scheme == "fp8":  # in bfloat16 on a CPU the plain layers are packed for oneDNN; these keep their own forward
        with ChatModel({"model_name_or_path": str(tmp_path), "infer_dtype": "bfloat16"}) as model:
            layer = model.engine.parts.model.model.layers[0].self_attn.q_proj
            assert type(layer) is torch.nn.Linear and hasattr(layer, "quantization_scheme")


def test_fp8_layers_fall_back_to_dequantized_weights():
    """Where chatplex's FP8 kernel fails its start-up check (here: a CPU, no Triton), the FP8 layers get their
    weights dequantized and transformers' FP8Linear runs F.linear over them."""
    from transformers.integrations.finegrained_fp8 import FP8Linear

    from chatplex.engines.hf import fp8_matmul

    assert fp8_matmul.check(torch.device("cpu"), {(32, 32)}) != ""  # reported, not raised
    torch.manual_seed(0)
    weight = torch.randn(96, 64)
    layer = FP8Linear(64, 96, block_size=(32, 32))
    layer.weight.data, layer.weight_scale_inv.data = fp8_matmul.quantize(weight, (32, 32))
    model = torch.nn.Sequential(layer)
    expected = fp8_matmul.dequantized(layer.weight.data, layer.weight_scale_inv.data, (32, 32))
    assert fp8_matmul.dequantize(model, torch.float32) == 1
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, expected)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), x @ expected.T)
    assert ((expected - weight).norm() / weight.norm()) < 0.05  # and it stands for the original weight


def test_fp8_experts_are_named_not_run():
    """Float8 weights outside FP8Linear layers (transformers' FP8Experts) would need transformers' Hub kernel: the
    check names their class (chatplex loads such checkpoints dequantized; this guards a model it did not spot)."""
    from chatplex.engines.hf import fp8_matmul

    class FP8Experts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(2, 8, 8, dtype=torch.float8_e4m3fn), requires_grad=False)

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), FP8Experts())
    assert fp8_matmul.other_fp8_modules(model) == {"FP8Experts"}
    assert fp8_matmul.other_fp8_modules(torch.nn.Sequential(torch.nn.Linear(8, 8))) == set()
