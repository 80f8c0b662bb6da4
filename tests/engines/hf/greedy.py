"""Greedy tokens for equality tests: transformers' `generate` one prompt at a time, and the engine's, all prompts
at once (so they share steps)."""

from __future__ import annotations

import asyncio
from typing import Any

from chatplex import ChatModel


def generate_tokens(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int) -> list[list[int]]:
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        rows.append(out[0, ids["input_ids"].shape[1]:].tolist())
    return rows


async def request_tokens(model: ChatModel, prompt: str, new_tokens: int, adapter: str | None = None) -> list[int]:
    request = model.build_request(prompt=prompt, do_sample=False, max_new_tokens=new_tokens, ignore_eos=True,
                                  adapter=adapter)
    return [token async for delta in model.agenerate(request) for token in delta.token_ids]


async def engine_tokens(model: ChatModel, prompts: list[str], new_tokens: int,
                        adapter: str | None = None) -> list[list[int]]:
    return list(await asyncio.gather(*(request_tokens(model, p, new_tokens, adapter) for p in prompts)))
