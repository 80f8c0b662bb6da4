"""Embeddings from the served causal LM: its final hidden states, pooled at the last token or averaged.

Runs on the engine thread between steps (EngineCore.call), so it never races the engine's own forward passes.
The inputs go through the decoder as the engine runs a prefill: laid end to end in one row, each one attending
causally over its own tokens only (paged attention with every input a fresh prefill segment), so there is no
padding and a vector does not depend on what else is in the batch. The keys and values each layer writes are
sent to the cache's scratch block (block 0, never handed to a sequence): nothing live is overwritten.
"""

from __future__ import annotations

import torch

from chatplex.engines.hf.attention import AttentionMetadata, PrefillSegment
from chatplex.engines.hf.pooling import pool_flat
from chatplex.engines.hf.runner import ModelRunner
from chatplex.engines.hf.scoring import decoder_of


def _groups(ids: list[list[int]], max_tokens: int) -> list[list[list[int]]]:
    """Consecutive inputs packed into forward passes of at most `max_tokens` tokens (one input may exceed it)."""
    groups: list[list[list[int]]] = [[]]
    size = 0
    for x in ids:
        if groups[-1] and size + len(x) > max_tokens:
            groups.append([])
            size = 0
        groups[-1].append(x)
        size += len(x)
    return groups


@torch.inference_mode()
def _forward(runner: ModelRunner, group: list[list[int]], mode: str, adapter: str | None) -> torch.Tensor:
    device = runner.device
    lengths = [len(x) for x in group]
    input_ids = torch.tensor([t for x in group for t in x], dtype=torch.long, device=device)
    positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
    segments, offset = [], 0
    for n in lengths:
        segments.append(PrefillSegment(offset, n, 0, None))
        offset += n
    scratch = torch.arange(len(input_ids), device=device) % runner.block_size  # block 0's slots
    meta = AttentionMetadata(runner.cache, scratch, 0, None, None, segments)
    lora = runner.lora if adapter is not None else None
    if lora is not None and adapter is not None:  # an unmerged adapter_name_or_path: every token, as in generation
        lora.activate({adapter: torch.arange(len(input_ids), device=device)})
    try:
        hidden = decoder_of(runner.model)(
            input_ids=input_ids[None], position_ids=positions[None], use_cache=False, chatplex_meta=meta
        ).last_hidden_state[0]
    finally:
        if lora is not None:
            lora.deactivate()
    return pool_flat(hidden, lengths, mode)


def embed(
    runner: ModelRunner, ids: list[list[int]], mode: str, max_tokens: int, adapter: str | None = None
) -> torch.Tensor:
    """[N, H] float32 pooled final hidden states, one row per input (on the engine thread); `adapter`: the
    resident adapter the model serves requests that name none with (an unmerged adapter_name_or_path)."""
    return torch.cat([_forward(runner, group, mode, adapter) for group in _groups(ids, max_tokens)])
