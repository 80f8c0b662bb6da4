"""A tiny random Llama checkpoint with a word-level tokenizer, for the decode-path equality tests (CUDA graphs,
the compiled CPU step): its output layer is scaled so greedy picks have clear margins (near-ties would make
rounding differences between kernels decide); the reference tokens from `generate` and the engine's, for token-id
prompts."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import torch


def write_tiny_llama(path: Path, vocab: int, max_positions: int, **shape: int) -> str:
    """`shape` overrides the config's sizes (hidden_size, num_attention_heads, ...)."""
    import transformers

    from chatplex.models.dummy import dummy_tokenizer

    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, **shape}
    config = transformers.LlamaConfig(
        vocab_size=vocab, max_position_embeddings=max_positions, eos_token_id=vocab - 1, tie_word_embeddings=False,
        **sizes,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    model.save_pretrained(path)
    dummy_tokenizer(vocab).save_pretrained(path)
    return str(path)


def generate_tokens(model_dir: str, prompts: list[list[int]], new_tokens: list[int], device: str) -> list[list[int]]:
    """transformers' greedy `generate` (float32) for each token-id prompt, one at a time: the reference."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return [
        reference.generate(torch.tensor([p], device=device), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=0)[0, len(p):].tolist()
        for p, n in zip(prompts, new_tokens)
    ]


def engine_tokens(model: Any, prompts: list[list[int]], new_tokens: list[int]) -> list[list[int]]:
    """The engine's greedy tokens for every token-id prompt, all requests at once (so they share steps)."""
    from chatplex.sampling import build_sampling_params
    from chatplex.types import GenerationRequest

    async def one(prompt: list[int], new: int) -> list[int]:
        sp = build_sampling_params({"max_new_tokens": new, "temperature": 0, "ignore_eos": True})
        request = GenerationRequest(sampling=sp, prompt_token_ids=prompt)
        return [t async for d in model.agenerate(request) for t in d.token_ids]

    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(one(p, n) for p, n in zip(prompts, new_tokens))))

    return model._loop.run(main())


def compiled_and_eager_logits(
    model: Any, vocab: int, block_size: int, eager_context: Any = contextlib.nullcontext
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of five sequences (contexts of 1-64 positions over a cache of random keys and values)
    through the engine's compiled step and through the eager forward (inside `eager_context()`): float32 logits
    [5, vocab] of each."""
    from chatplex.engines.hf.decode_step import decode_forward
    from chatplex.engines.hf.step_inputs import DeviceInputs

    runner = model.engine.runner
    cache = runner.cache
    torch.manual_seed(1)
    for k, v in zip(cache.keys, cache.values):
        k.normal_(), v.normal_()
    rows = 5
    lens = torch.tensor([3, 17, 40, 1, 64], dtype=torch.int32)
    tables = torch.arange(1, 1 + rows * 4, dtype=torch.int32).reshape(rows, 4)
    positions = (lens - 1).long()
    slots = tables[torch.arange(rows), positions // block_size].long() * block_size + positions % block_size
    step = DeviceInputs(torch.randint(0, vocab, (rows,)), positions, slots, tables, lens)
    with torch.inference_mode():
        compiled = runner.graphs.replay(step).float()
        with eager_context():
            eager = decode_forward(runner.model, cache, step.input_ids[None], positions[None], slots, tables, lens)
    return compiled, eager.float()
