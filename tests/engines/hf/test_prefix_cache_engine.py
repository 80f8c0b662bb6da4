"""Prefix caching on the HF engine with tiny models of real architectures (fp32, greedy): requests that find their
prefix in the cache produce exactly what `model.generate` produces, through chunked prefill, small blocks and
preemption; the cached tokens are reported per request and counted in the engine's stats; the key turns it off.
LoRA adapters and media in the cache key are tested beside their own engines (test_lora.py, test_multimodal_*)."""

from __future__ import annotations

import asyncio

import pytest

from chatplex import ChatModel
from chatplex.errors import ConfigError
from tests.engines.hf.test_engine_equivalence import NEW_TOKENS, reference

SYSTEM = "You are a careful assistant. " + "Answer in full sentences, cite sources, be brief. " * 4
PROMPTS = [SYSTEM + "What is two plus two?", SYSTEM + "Name a colour.", SYSTEM + "x", SYSTEM[:40], SYSTEM]


async def run(model: ChatModel, prompt: str) -> tuple[list[int], int | None]:
    request = model.build_request(prompt=prompt, do_sample=False, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    tokens: list[int] = []
    cached = None
    async for delta in model.agenerate(request):
        tokens += delta.token_ids
        cached = delta.cached_tokens
    return tokens, cached


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(
    "engine_args",
    [
        {},
        {"max_num_batched_tokens": 8, "kv_block_size": 4},  # chunks start inside and after cached prefixes
        {"kv_block_size": 4, "kv_cache_memory_gb": 100 * 512 / 2**30},  # ~100 tokens: preemption and eviction
    ],
    ids=["plain", "chunked", "preempting"],
)
async def test_cached_prefixes_give_what_generate_gives(tiny_model_dir, family, engine_args):
    path = tiny_model_dir(family)
    expected = [reference(path, p) for p in PROMPTS]
    with ChatModel({"model_name_or_path": path, "infer_dtype": "float32", **engine_args}) as model:
        one_by_one = [await run(model, p) for p in PROMPTS]  # each finds what the ones before it left
        together = await asyncio.gather(*(run(model, p) for p in PROMPTS))
        stats = model.stats()
    assert [tokens for tokens, _ in one_by_one] == expected
    assert [tokens for tokens, _ in together] == expected
    cached = [c for _, c in one_by_one]
    assert cached[0] == 0 and all(c > 0 for c in cached[1:3]), cached
    assert 0 < stats.prefix_cache_hits < stats.prefix_cache_queries
    if "kv_cache_memory_gb" in engine_args:
        assert stats.preemptions > 0


async def test_multi_turn_conversation_reuses_its_past_turns(tiny_model_dir):
    """Each turn's prompt is the last one plus the reply and a new message: it finds nearly all of it cached."""
    path = tiny_model_dir("llama")
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    with ChatModel({"model_name_or_path": path, "infer_dtype": "float32"}) as model:
        for turn in range(3):
            messages.append({"role": "user", "content": f"Question number {turn}?"})
            [reply] = await model.achat(messages, do_sample=False, max_new_tokens=6)
            messages.append({"role": "assistant", "content": reply.response_text})
            request = model.build_request(messages=messages[:-1], do_sample=False, max_new_tokens=6)
            last = [d async for d in model.agenerate(request)][-1]
            # the same prompt again: all of it but the block holding its last token
            assert last.cached_tokens == (reply.prompt_length - 1) // 16 * 16
        stats = model.stats()
    assert stats.prefix_cache_hits > 0.5 * stats.prefix_cache_queries


async def test_off_by_key_and_with_batch_invariant(tiny_model_dir):
    path = tiny_model_dir("llama")
    with ChatModel({"model_name_or_path": path, "infer_dtype": "float32", "enable_prefix_caching": False}) as model:
        for prompt in PROMPTS[:2]:
            _, cached = await run(model, prompt)
            assert cached is None
        assert model.stats().prefix_cache_hits == model.stats().prefix_cache_queries == 0
    with pytest.raises(ConfigError, match="enable_prefix_caching"):
        ChatModel({"model_name_or_path": path, "batch_invariant": True, "enable_prefix_caching": True})
