"""batch_invariant: greedy output of the embedded SmolLM2 in bfloat16 (the CPU default) is the same whether a
request runs alone or beside others, and where it cannot hold the option is refused, naming what to change."""

from __future__ import annotations

import asyncio

import pytest

from chatplex import ChatModel
from chatplex.errors import ConfigError

PROMPTS = [
    "Tell me a story about a dragon.",
    "What is the capital of France?",
    "Write a poem about autumn leaves.",
    "Explain how a bicycle works.",
    "List five fruits and their colours.",
    "Why do cats purr?",
]


def test_greedy_replies_alone_equal_replies_in_a_batch():
    """Each prompt alone (one sequence a step), then all six at once (prefilled together, decoded in batches that
    shrink as they finish). Without batch_invariant, this machine gave 2 of 6 equal (BENCHMARKS.md, 10)."""
    kw = {"do_sample": False, "max_new_tokens": 64}
    with ChatModel({"infer_dtype": "bfloat16", "batch_invariant": True}) as model:
        alone = [model.chat([{"role": "user", "content": p}], **kw)[0].response_text for p in PROMPTS]

        async def together():
            return await asyncio.gather(*(model.achat([{"role": "user", "content": p}], **kw) for p in PROMPTS))

        batched = [r[0].response_text for r in model._loop.run(together())]
    assert batched == alone
    assert len(set(alone)) == len(PROMPTS) and all(alone)


def test_refused_where_it_cannot_hold():
    with pytest.raises(ConfigError, match="batch_invariant runs on a CPU in bfloat16") as err:
        ChatModel({"infer_dtype": "float32", "batch_invariant": True})
    assert err.value.param == "batch_invariant"
    with pytest.raises(ConfigError, match=r"max_num_batched_tokens \(16\) above max_num_seqs \(64\)") as err:
        ChatModel({"max_num_batched_tokens": 16, "batch_invariant": True})
    assert err.value.param == "max_num_batched_tokens"
    with pytest.raises(ConfigError, match="batch_invariant: the llama.cpp engine") as err:
        ChatModel({"infer_backend": "llama.cpp", "batch_invariant": True})
    assert err.value.param == "batch_invariant"
