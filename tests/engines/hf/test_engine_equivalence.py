"""The batched engine computes exactly what `model.generate` computes (fp32, greedy), for tiny models of real
architectures, through chunked prefill, many KV blocks, and preemption."""

from __future__ import annotations

import asyncio

import pytest
import torch

from chatplex import ChatModel

PROMPTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog and keeps running far away",
    "One two three four five",
    "A much longer prompt: " + "lorem ipsum dolor sit amet " * 6,
    "x",
]
NEW_TOKENS = 12


def reference(model_dir: str, prompt: str) -> list[int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(
        **ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id
    )
    return out[0, ids["input_ids"].shape[1] :].tolist()


async def engine_outputs(model: ChatModel) -> list[list[int]]:
    async def one(prompt: str) -> list[int]:
        request = model.build_request(prompt=prompt, do_sample=False, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        tokens: list[int] = []
        async for delta in model.agenerate(request):
            tokens += delta.token_ids
        return tokens

    return await asyncio.gather(*(one(p) for p in PROMPTS))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(
    "engine_args",
    [
        {},
        {"max_num_batched_tokens": 8, "kv_block_size": 4},  # chunked prefill mixed with decodes, many blocks
        {"kv_block_size": 4, "kv_cache_memory_gb": 100 * 512 / 2**30},  # ~100 tokens of cache: forces preemption
    ],
    ids=["plain", "chunked", "preempting"],
)
async def test_batched_greedy_equals_generate(tiny_model_dir, family, engine_args):
    path = tiny_model_dir(family)
    expected = [reference(path, p) for p in PROMPTS]
    with ChatModel({"model_name_or_path": path, "infer_dtype": "float32", **engine_args}) as model:
        got = await engine_outputs(model)
        stats = model.stats()
    assert got == expected
    assert stats.max_batch_size > 1  # really batched
    if "kv_cache_memory_gb" in engine_args:
        assert stats.preemptions > 0
