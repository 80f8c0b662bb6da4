"""The decode step compiled a decoder layer at a time (compiled_layers.py, what CUDA graphs capture on a GPU), run
here on the CPU: the same logits and cache writes as the eager step, one compile for every layer and batch size,
and the model's other forwards left eager."""

from __future__ import annotations

import pytest
import torch

from chatplex import ChatModel
from chatplex.engines.hf.compiled_layers import decoder_layers
from chatplex.engines.hf.decode_step import DecodeStep, StaticDecodeInputs
from tests.engines.hf.tiny_llama import engine_tokens, write_tiny_llama

VOCAB = 256
LAYERS = 4
BLOCK = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-layers"), VOCAB, 512, num_hidden_layers=LAYERS)


def _engine(model_dir: str, kv_cache_dtype: str) -> ChatModel:
    return ChatModel({"model_name_or_path": model_dir, "device": "cpu", "infer_dtype": "float32", "compile": False,
                      "kv_cache_dtype": kv_cache_dtype, "kv_block_size": BLOCK, "kv_cache_memory_gb": 0.02,
                      "max_num_seqs": 8})


def _fill(inputs: StaticDecodeInputs, cache, rows: int) -> None:
    """Decode inputs for `rows` sequences with contexts of 1..40 positions over blocks of the cache."""
    lens = torch.tensor([3, 17, 40, 1, 9, 25, 2, 33][:rows], dtype=torch.int32)
    inputs.lens[:rows] = lens
    inputs.tables[:rows, :3] = torch.arange(1, 1 + rows * 3, dtype=torch.int32).reshape(rows, 3)
    inputs.positions[:rows] = (lens - 1).long()
    blocks = inputs.tables[torch.arange(rows), inputs.positions[:rows] // BLOCK].long()
    inputs.slots[:rows] = blocks * BLOCK + inputs.positions[:rows] % BLOCK
    inputs.input_ids[:rows] = torch.arange(5, 5 + rows)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e5m2"])  # traced attention; the paged-decode op (a GPU's)
def test_a_layer_at_a_time_equals_the_eager_step_with_one_compile(model_dir, kv_cache_dtype):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compiles of earlier tests count against Dynamo's limits
    with _engine(model_dir, kv_cache_dtype) as model:
        runner = model.engine.runner
        cache = runner.cache
        assert len(cache.keys) == LAYERS
        torch.manual_seed(0)
        for k, v in zip(cache.keys, cache.values):
            k.copy_(torch.randn(k.shape).to(k.dtype)), v.copy_(torch.randn(v.shape).to(v.dtype))
        start = [(k.clone(), v.clone()) for k, v in zip(cache.keys, cache.values)]
        inputs = StaticDecodeInputs(torch.device("cpu"), 8, 4)
        eager = DecodeStep(runner.model, cache, inputs, compile=False)
        layered = DecodeStep(runner.model, cache, inputs, compile=True, per_layer=True)
        assert layered.compiled_layers is not None and layered.compiled_layers.compiled_classes == 1
        graphs = counters["stats"]["unique_graphs"]
        with torch.inference_mode():
            for rows in (5, 2, 7, 3):  # the first size compiles; none after it does
                _fill(inputs, cache, rows)
                for (k, v), (k0, v0) in zip(zip(cache.keys, cache.values), start):
                    k.copy_(k0), v.copy_(v0)
                want = eager(rows).clone()
                written = [(k.clone(), v.clone()) for k, v in zip(cache.keys, cache.values)]
                for (k, v), (k0, v0) in zip(zip(cache.keys, cache.values), start):
                    k.copy_(k0), v.copy_(v0)
                got = layered(rows)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
                # Each layer wrote into its own cache what the eager step wrote, up to rounding: Inductor's fused
                # rotary rounds differently in float32, which can put an FP8 value one step (25% for e5m2) apart.
                tolerance = {"rtol": 1e-4, "atol": 1e-4} if kv_cache_dtype == "auto" else {"rtol": 0.3, "atol": 1e-2}
                for (k, v), (wk, wv) in zip(zip(cache.keys, cache.values), written):
                    torch.testing.assert_close(k.float(), wk.float(), **tolerance)
                    torch.testing.assert_close(v.float(), wv.float(), **tolerance)
        assert counters["stats"]["unique_graphs"] - graphs == 1


def test_other_forwards_of_the_model_stay_eager(model_dir):
    """With the layers swapped, and the compiled step run, prefill chunks and eager decode steps run the layers'
    own forwards: the same tokens as before, and nothing compiled."""
    from torch._dynamo.utils import counters

    prompts, new = [[7, 8, 9], [3] * 40, [11]], [6, 4, 5]
    with _engine(model_dir, "auto") as model:
        before = engine_tokens(model, prompts, new)
        runner = model.engine.runner
        inputs = StaticDecodeInputs(torch.device("cpu"), 4, 4)
        step = DecodeStep(runner.model, runner.cache, inputs, compile=True, per_layer=True)
        assert step.compiled_layers is not None
        with torch.inference_mode():
            _fill(inputs, runner.cache, 2)
            step(2)
        graphs = counters["stats"]["unique_graphs"]
        assert engine_tokens(model, prompts, new) == before
        assert counters["stats"]["unique_graphs"] == graphs


def test_the_layers_and_their_cache_indices_are_found(model_dir):
    from transformers import AutoModelForCausalLM

    with _engine(model_dir, "auto") as model:
        found = decoder_layers(model.engine.runner.model)
        assert [index for _, index in found] == list(range(LAYERS))
        assert [layer for layer, _ in found] == list(model.engine.runner.model.model.layers)
    plain = AutoModelForCausalLM.from_pretrained(model_dir)  # transformers' own attention: nothing to compile apart
    assert decoder_layers(plain) is None


def test_gemma3_layers_which_hold_their_index_as_their_attention_does_are_found():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from chatplex.engines.hf import attention

    config = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=32, vocab_size=128)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(config)
    model.set_attn_implementation(attention.register())
    assert [index for _, index in decoder_layers(model)] == [0, 1, 2]
