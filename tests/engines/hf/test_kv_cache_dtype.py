"""kv_cache_dtype fp8 on the HF engine (CPU): twice the blocks in the same memory, and greedy output equal to
transformers' `generate` where attention sees keys and values rounded through the same float8 type (a reference
attention function registered with transformers: its SDPA over fp8-rounded K/V). Chunked prefill and prefix
caching read the stored (rounded) keys back, so they must agree with it too."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from chatplex import ChatModel
from tests.engines.hf.greedy import engine_tokens, generate_tokens

PROMPTS = ["Hi", "The quick brown fox jumps over the lazy dog", "One two three four five six seven", "x"]
NEW_TOKENS = 10
FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _rounded_sdpa(fp8: torch.dtype):
    def forward(module, query, key, value, attention_mask, **kwargs):
        finite = torch.finfo(fp8).max
        key = key.clamp(-finite, finite).to(fp8).to(query.dtype)
        value = value.clamp(-finite, finite).to(fp8).to(query.dtype)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    return forward


def _reference(path: str, fp8: torch.dtype | None) -> list[list[int]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = f"fp8_rounded_{fp8}"
    AttentionInterface.register(name, _rounded_sdpa(fp8) if fp8 else sdpa_attention_forward)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=name).eval()
    return generate_tokens(model, AutoTokenizer.from_pretrained(path), PROMPTS, NEW_TOKENS)


async def _tokens(model: ChatModel, prompts: list[str]) -> list[list[int]]:
    return await engine_tokens(model, prompts, NEW_TOKENS)


@pytest.mark.parametrize("kv", list(FP8))
@pytest.mark.parametrize("engine_args", [{}, {"max_num_batched_tokens": 8}], ids=["plain", "chunked"])
async def test_fp8_cache_equals_generate_over_rounded_keys(tiny_model_dir, kv, engine_args):
    path = tiny_model_dir("llama")
    expected = _reference(path, FP8[kv])
    assert expected != _reference(path, None)  # the rounding shows in the tokens: the comparison can tell
    common = {"model_name_or_path": path, "infer_dtype": "float32", "kv_cache_memory_gb": 0.002, "kv_block_size": 4,
              **engine_args}
    with ChatModel({**common, "kv_cache_dtype": kv}) as model:
        cache = model.engine.parts.cache
        assert cache.keys[0].dtype == FP8[kv]
        assert await _tokens(model, PROMPTS) == expected
        assert await _tokens(model, PROMPTS[1:2]) == expected[1:2]  # again, its prefix from the cache
        assert model.stats().prefix_cache_hits > 0
        fp8_blocks = cache.num_blocks
    with ChatModel(common) as model:
        assert model.engine.parts.cache.num_blocks * 4 == pytest.approx(fp8_blocks, abs=4)  # 1 byte vs 4 (fp32)
        assert await _tokens(model, PROMPTS) == _reference(path, None)
