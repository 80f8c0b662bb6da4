"""Paged attention for any transformers decoder, plugged in through transformers' attention registry.

The model runs with `use_cache=False` on a flat batch: all new tokens of all scheduled sequences in one row,
decode tokens first. Each layer's keys and values arrive here already rotated; this function writes them into
the paged cache and attends each query over its own sequence's cached context: prefill chunks with PyTorch SDPA,
decode tokens through their block tables (paged_decode.py) on a GPU or CPU, else over gathered slots with SDPA.
Decode-only steps that CUDA graphs capture or torch.compile traces take `_captured_decode`; a compiled CPU step
with prompt tokens (cpu_prefill.py) calls the eager path as one op a layer, with the step's metadata held outside
the trace (HeldMetadata).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface

from chatplex.engines.hf.kv_cache import PagedKVCache, to_cache, write_slots
from chatplex.engines.hf.paged_decode import compiled_cpu_decode_attention, paged_decode_attention

ATTENTION_NAME = "chatplex_paged"
# cuDNN's SDPA builds a plan per new sequence length on the host (milliseconds each): prompts vary, so skip it.
_PREFILL_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class PrefillSegment:
    q_start: int  # offset of the segment's tokens in the flat batch
    q_len: int
    start_pos: int  # position of the first new token in its sequence
    ctx_slots: torch.Tensor | None  # [start_pos + q_len] cache slots of the whole context (None if start_pos == 0)
    # [start_pos + q_len] span id per context position: tokens of one span (a Gemma 3 image, >= 0) attend to
    # each other both ways; -1 elsewhere. None: plain causal.
    spans: torch.Tensor | None = None


@dataclass
class AttentionMetadata:
    cache: PagedKVCache
    slot_mapping: torch.Tensor  # [T] where each new token's key/value goes
    num_decode: int  # the first num_decode tokens are single-token decodes
    decode_ctx_slots: torch.Tensor | None  # [num_decode, max_ctx] (padded with slot 0)
    decode_positions: torch.Tensor | None  # [num_decode] position of each decode token
    prefills: list[PrefillSegment]
    # Block-table path (paged_decode.py: Triton on CUDA, a block gather on the CPU).
    decode_block_tables: torch.Tensor | None = None  # [num_decode, width] int32
    decode_seq_lens: torch.Tensor | None = None  # [num_decode] int32, context length including the new token
    # Rows from here on are padding (eager steps round their token count up, see runner.py): no attention, zeros.
    padded_from: int | None = None
    # batch_invariant: decode attention per sequence, so a sequence's numbers never depend on the others' lengths.
    per_sequence_decode: bool = False
    # Masks depend only on the step, not the layer: built once per sliding-window size and reused by every layer.
    # Keys: the window (0: none) for the decode mask, (segment index, window) for a prefill segment's mask (None:
    # causal).
    masks: dict[Any, torch.Tensor | None] = field(default_factory=dict)


@dataclass(frozen=True)
class HeldMetadata:
    """What a compiled CPU step with prompt tokens (cpu_prefill.py) passes as its metadata: the cache alone. The
    step's own metadata (segments, block tables, slots) differs every step; traced, it would be guarded on and
    compiled again and again. So it reaches the attention at run time instead, through `holding`, and each layer's
    attention is one opaque op (`chatplex::held_attention`) that runs the eager path with it."""

    cache: PagedKVCache


class _Held(threading.local):
    """Per thread: the engine thread runs the step and so the op. A step's context that is not an argument is
    chatplex's one exception to passing it as one, for the reason HeldMetadata gives."""

    meta: AttentionMetadata | None = None


_HELD = _Held()


@contextmanager
def holding(meta: AttentionMetadata) -> Iterator[None]:
    """Hand `meta` to the `chatplex::held_attention` calls of the compiled step run inside (this thread's)."""
    _HELD.meta = meta
    try:
        yield
    finally:
        _HELD.meta = None


def _held_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    window: int,
) -> torch.Tensor:
    meta = _HELD.meta
    if meta is None:
        raise RuntimeError("chatplex::held_attention runs inside attention.holding(...) only")
    return _eager_attention(meta, query, key, value, k_cache, v_cache, scale, window)


# Defined with torch.library's low-level calls, as paged_decode.py's op (a cheaper call than `custom_op`'s); the
# caches are declared mutated, so torch.compile keeps each layer's call in order and copies nothing.
_LIB = torch.library.Library("chatplex", "FRAGMENT")
_LIB.define(
    "held_attention(Tensor query, Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, float scale, "
    "int window) -> Tensor",
    tags=(torch.Tag.pt2_compliant_tag,),
)
_LIB.impl("held_attention", _held_attention, "CPU")


@torch.library.register_fake("chatplex::held_attention", lib=_LIB)
def _held_attention_fake(query, key, value, k_cache, v_cache, scale, window):
    return query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])


def _decode_mask(meta: AttentionMetadata, window: int) -> torch.Tensor:
    if window not in meta.masks:
        meta.masks[window] = _build_decode_mask(meta, window)
    mask = meta.masks[window]
    assert mask is not None  # decode masks are always built; only prefill segments store None (plain causal)
    return mask


def _build_decode_mask(meta: AttentionMetadata, window: int) -> torch.Tensor:
    assert meta.decode_ctx_slots is not None and meta.decode_positions is not None
    key_pos = torch.arange(meta.decode_ctx_slots.shape[1], device=meta.slot_mapping.device)
    q_pos = meta.decode_positions[:, None]
    mask = key_pos[None, :] <= q_pos
    if window:
        mask &= key_pos[None, :] > q_pos - window
    return mask[:, None, None, :]  # [B, 1, 1, L]


def _prefill_mask(seg: PrefillSegment, window: int, device: torch.device) -> torch.Tensor | None:
    if seg.start_pos == 0 and not window and seg.spans is None:
        return None  # plain causal
    q_pos = torch.arange(seg.start_pos, seg.start_pos + seg.q_len, device=device)[:, None]
    key_pos = torch.arange(seg.start_pos + seg.q_len, device=device)[None, :]
    mask = key_pos <= q_pos
    if seg.spans is not None:  # causal OR same span, then the window (transformers' Gemma 3 order)
        q_span = seg.spans[seg.start_pos :, None]
        mask |= (q_span >= 0) & (q_span == seg.spans[None, :])
    if window:
        mask &= key_pos > q_pos - window
    return mask


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, heads, T, head_dim]
    key: torch.Tensor,  # [1, kv_heads, T, head_dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    chatplex_meta: AttentionMetadata | HeldMetadata | None = None,
    chatplex_layer_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    meta = chatplex_meta
    if meta is None:
        raise RuntimeError("chatplex_paged attention runs only inside chatplex's Hugging Face engine")
    if chatplex_layer_cache is not None:  # passed in by a compiled decoder layer (compiled_layers.py says why)
        k_cache, v_cache = chatplex_layer_cache
    else:
        layer_idx = cast(int, module.layer_idx)  # transformers' attention modules hold it as a plain int attribute
        k_cache, v_cache = meta.cache.keys[layer_idx], meta.cache.values[layer_idx]
    window = getattr(module, "sliding_window", None)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if isinstance(meta, HeldMetadata):  # a compiled CPU step with prompt tokens (cpu_prefill.py)
        out = torch.ops.chatplex.held_attention(query, key, value, k_cache, v_cache, scale, window or 0)
        return out, None
    if meta.decode_block_tables is not None and not meta.prefills and (query.is_cuda or torch.compiler.is_compiling()):
        return _captured_decode(meta, query, key, value, k_cache, v_cache, scale, window or 0), None
    return _eager_attention(meta, query, key, value, k_cache, v_cache, scaling, window or 0), None


def _eager_attention(
    meta: AttentionMetadata,
    query: torch.Tensor,  # [1, heads, T, head_dim]
    key: torch.Tensor,  # [1, kv_heads, T, head_dim]
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scaling: float | None,
    window: int,
) -> torch.Tensor:
    """This step's keys and values written into the cache, then each query attended over its sequence's context:
    [1, T, heads, head_dim]."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    write_slots(k_cache, meta.slot_mapping, key[0].transpose(0, 1))
    write_slots(v_cache, meta.slot_mapping, value[0].transpose(0, 1))
    # An FP8 cache is read back in the model's dtype (`.to` is free when the cache already is in it).
    quantized_cache = k_cache.dtype != query.dtype
    q = query[0]  # [heads, T, head_dim]
    out = query.new_empty(q.shape[1], q.shape[0], q.shape[2])  # [T, heads, head_dim]
    nd = meta.num_decode
    if nd and meta.decode_block_tables is not None:
        assert meta.decode_seq_lens is not None  # set together with decode_block_tables (runner, decode_step)
        out[:nd] = paged_decode_attention(
            q[:, :nd].transpose(0, 1).contiguous(),
            k_cache,
            v_cache,
            meta.decode_block_tables,
            meta.decode_seq_lens,
            scale,
            meta.cache.block_size,
            window,
            per_sequence=meta.per_sequence_decode,
        )
    elif nd:
        qd = q[:, :nd].transpose(0, 1).unsqueeze(2)  # [B, heads, 1, D]
        kd = k_cache[meta.decode_ctx_slots].to(q.dtype).transpose(1, 2)  # [B, kv_heads, L, D]
        vd = v_cache[meta.decode_ctx_slots].to(q.dtype).transpose(1, 2)
        od = F.scaled_dot_product_attention(
            qd, kd, vd, attn_mask=_decode_mask(meta, window), scale=scaling, enable_gqa=True
        )
        out[:nd] = od[:, :, 0]
    group = q.shape[0] // k_cache.shape[1]
    for i, seg in enumerate(meta.prefills):
        qs = q[:, seg.q_start : seg.q_start + seg.q_len].unsqueeze(0)
        if seg.ctx_slots is None:  # the whole context is new: use it directly, no gather
            ks = key[:, :, seg.q_start : seg.q_start + seg.q_len]
            vs = value[:, :, seg.q_start : seg.q_start + seg.q_len]
            if quantized_cache:  # as stored, so a prompt's tokens see the same keys in every chunk and step
                ks, vs = to_cache(ks, k_cache.dtype).to(q.dtype), to_cache(vs, v_cache.dtype).to(q.dtype)
        else:
            ks = k_cache[seg.ctx_slots].to(q.dtype).transpose(0, 1).unsqueeze(0)
            vs = v_cache[seg.ctx_slots].to(q.dtype).transpose(0, 1).unsqueeze(0)
        if group > 1 and q.is_cuda:
            # SDPA's fused CUDA kernels don't take grouped heads (enable_gqa falls back to the slow math kernel).
            ks, vs = ks.repeat_interleave(group, dim=1), vs.repeat_interleave(group, dim=1)
        if (i, window) not in meta.masks:
            meta.masks[(i, window)] = _prefill_mask(seg, window, q.device)
        mask = meta.masks[(i, window)]
        with sdpa_kernel(_PREFILL_BACKENDS):
            seg_out = F.scaled_dot_product_attention(
                qs,
                ks,
                vs,
                attn_mask=mask,
                is_causal=mask is None,
                scale=scaling,
                enable_gqa=group > 1 and not q.is_cuda,
            )
        out[seg.q_start : seg.q_start + seg.q_len] = seg_out[0].transpose(0, 1)
    if meta.padded_from is not None:
        out[meta.padded_from :] = 0
    return out.unsqueeze(0)


def _captured_decode(
    meta: AttentionMetadata,
    query: torch.Tensor,  # [1, heads, B, head_dim]
    key: torch.Tensor,  # [1, kv_heads, B, head_dim]
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    window: int,
) -> torch.Tensor:
    """A decode-only step that CUDA graphs capture or torch.compile traces: [1, B, heads, head_dim]. A compiled CPU
    step calls cpu_decode_kernel.py's kernel where it is loaded, else traces the attention itself, for Inductor to
    fuse (paged_decode.compiled_cpu_decode_attention); a GPU step, and a compiled CPU one over an FP8 cache, run
    cache write and attention as one op, opaque to both. (Eager CPU steps take _eager_attention directly: no
    dispatch to a Python op.)"""
    assert meta.decode_block_tables is not None and meta.decode_seq_lens is not None  # set together
    assert not meta.per_sequence_decode  # batch_invariant is refused beside compiled or captured steps
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [B, heads or kv_heads, head_dim]
    tables, lens, block_size = meta.decode_block_tables, meta.decode_seq_lens, meta.cache.block_size
    if not query.is_cuda and k_cache.dtype == query.dtype:
        write_slots(k_cache, meta.slot_mapping, k)
        write_slots(v_cache, meta.slot_mapping, v)
        out = compiled_cpu_decode_attention(q, k_cache, v_cache, tables, lens, scale, block_size, window)
    else:
        out = torch.ops.chatplex.paged_decode(
            q, k, v, k_cache, v_cache, meta.slot_mapping, tables, lens, scale, block_size, window
        )
    return out.unsqueeze(0)


def register() -> str:
    """Make the attention function known to transformers (idempotent); returns its name."""
    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
    return ATTENTION_NAME
