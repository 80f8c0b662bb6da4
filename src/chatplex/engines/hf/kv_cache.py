"""The KV cache: one pool of slots per layer, allocated once, addressed through block tables.

Why paged blocks rather than one contiguous region per sequence slot: a per-slot cache must reserve the full
context length for every slot, so 64 slots of an 8k-context model cost 64 x 8k tokens of memory even when most
requests are short. Blocks of 16 tokens are handed out as sequences grow, so memory follows real lengths and
the same budget holds several times more concurrent sequences. Attention gathers a sequence's slots through
its block table (see attention.py).
"""

from __future__ import annotations

from typing import Any

import torch

CPU_DEFAULT_GB = 2.0
# kv_cache_dtype (vLLM's names) -> the element type; auto is the model's dtype. FP8 halves the bytes per token of
# a 16-bit cache; values are stored unscaled (scale 1.0, vLLM's default when a checkpoint has no KV scales),
# clamped to the format's finite range, and read back in the model's dtype.
FP8_DTYPES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def cache_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    return FP8_DTYPES.get(kv_cache_dtype, model_dtype)


def to_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Keys or values as the cache stores them (a float8 cast of an out-of-range value would be NaN, not its max)."""
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        finite = torch.finfo(dtype).max
        return x.clamp(-finite, finite).to(dtype)
    return x.to(dtype)


def write_slots(cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
    """cache[slots] = x, in the cache's type (index_copy_ has no float8 kernel on a CPU: FP8 goes as bytes)."""
    stored = to_cache(x, cache.dtype)
    if cache.element_size() == 1:
        cache.view(torch.uint8).index_copy_(0, slots, stored.view(torch.uint8))
    else:
        cache.index_copy_(0, slots, stored)


def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, kv_heads, head_dim


def bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    layers, kv_heads, head_dim = kv_shape(config)
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def budget_bytes(device: torch.device, memory_gb: float | None, gpu_memory_utilization: float) -> int:
    """How many bytes the cache may take: an explicit size, or a share of free GPU memory, or 2 GiB on CPU."""
    if memory_gb is not None:
        return int(memory_gb * 2**30)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = total - free
        return max(int(total * gpu_memory_utilization) - used, 0)
    return int(CPU_DEFAULT_GB * 2**30)


class PagedKVCache:
    """Key and value tensors per layer, each [num_blocks * block_size, kv_heads, head_dim]."""

    def __init__(self, config: Any, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device):
        layers, kv_heads, head_dim = kv_shape(config)
        slots = num_blocks * block_size
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.keys = [torch.zeros(slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(layers)]

    @classmethod
    def num_blocks_for(cls, config: Any, dtype: torch.dtype, block_size: int, budget: int) -> int:
        return budget // (bytes_per_token(config, dtype) * block_size)
