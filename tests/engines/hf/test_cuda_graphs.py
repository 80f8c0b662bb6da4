"""On a CUDA GPU: decode steps replayed from CUDA graphs (over the torch.compiled step) emit exactly what eager
steps and transformers' `generate` emit (fp32, greedy), for concurrent requests whose steps mix prefill chunks,
graph replays in several buckets and pending tokens (async scheduling).

This machine has no GPU, so here it skips; it runs on the device machine (BENCHMARKS.md names the call)."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from chatplex import ChatModel
from chatplex.sampling import build_sampling_params
from chatplex.types import GenerationRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

NEW_TOKENS = 24
VOCAB = 512


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A tiny random Llama with a word-level tokenizer; its output layer is scaled so greedy picks have clear
    margins (near-ties would make fp32 rounding differences between kernels decide)."""
    import transformers

    from chatplex.models.dummy import dummy_tokenizer

    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, eos_token_id=VOCAB - 1, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    path = tmp_path_factory.mktemp("tiny-llama-cuda")
    model.save_pretrained(path)
    dummy_tokenizer(VOCAB).save_pretrained(path)
    return str(path)


PROMPTS = [[random.Random(i).randrange(0, VOCAB - 2) for _ in range(n)] for i, n in enumerate([3, 40, 150, 7, 300, 1, 64, 90])]


def engine_tokens(model: ChatModel) -> list[list[int]]:
    sp = build_sampling_params({"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True})

    async def one(prompt: list[int]) -> list[int]:
        tokens: list[int] = []
        async for d in model.agenerate(GenerationRequest(sampling=sp, prompt_token_ids=prompt)):
            tokens += d.token_ids
        return tokens

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(one(p) for p in PROMPTS))

    return model._loop.run(main())


def run_engine(model_dir: str, **settings) -> tuple[list[list[int]], int]:
    with ChatModel({"model_name_or_path": model_dir, "infer_dtype": "float32", "max_num_seqs": 8,
                    "max_num_batched_tokens": 128, "kv_block_size": 16, **settings}) as model:
        assert model.engine.device.type == "cuda"
        return engine_tokens(model), model.engine.runner.graph_steps


def test_graph_replays_equal_eager_steps_and_generate(model_dir):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cuda").eval()
    expected = [
        reference.generate(torch.tensor([p], device="cuda"), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                           do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        for p in PROMPTS
    ]
    del reference
    graphs, graph_steps = run_engine(model_dir)
    eager, eager_graph_steps = run_engine(model_dir, enforce_eager=True)
    assert graph_steps > 0 and eager_graph_steps == 0
    assert eager == expected
    assert graphs == expected
