"""Decode attention read through block tables, on the device that runs the model: the Triton kernel on a GPU, on
the CPU cpu_decode_kernel.py's C++ kernel where it is built (bfloat16, AVX512_BF16), else a block gather and two
small matmuls per layer; `chatplex::paged_decode`, the same as one opaque op (cache write + attention) for CUDA
graphs (and compiled CPU steps over an FP8 cache); and the CPU's attention written for a compiled step to trace.

Why block tables on the CPU too: the portable path (attention.py) gathers every context slot one by one and runs
SDPA with a mask over the padded batch. For SmolLM2 at 8 streams of ~200 tokens on a 2-core CPU that was ~0.7 ms
per layer (SDPA's CPU flash kernel is built for long queries, not one token; a per-slot gather moves 384-byte
rows). Here whole blocks are gathered with `index_select` (6 KB rows), keys and values are put head-major in
float32 in the same copy, and each key/value head's group of query heads is one row block of a batched matmul:
~0.2 ms per layer. Float32 scores and softmax whatever the cache dtype, as SDPA's kernels accumulate.
"""

from __future__ import annotations

import torch

from chatplex.engines.hf import cpu_decode_kernel, triton_decode
from chatplex.engines.hf.kv_cache import write_slots


def available(device: torch.device) -> bool:
    """Whether decode steps on `device` read the cache through block tables (else attention.py gathers slots)."""
    return device.type == "cpu" or triton_decode.available(device)


def paged_decode_attention(
    q: torch.Tensor,  # [B, heads, head_dim]
    k_cache: torch.Tensor,  # [slots, kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32, context length including the current token
    scale: float,
    block_size: int,
    window: int = 0,  # attend to the last `window` positions only (0: all)
    per_sequence: bool = False,  # CPU: each sequence over its own length only (batch_invariant)
) -> torch.Tensor:
    if q.is_cuda:
        return triton_decode.paged_decode_attention(
            q, k_cache, v_cache, block_tables, seq_lens, scale, block_size, window
        )
    if cpu_decode_kernel.fits(q, k_cache, block_size):  # per sequence whatever the batch
        return cpu_decode_kernel.decode_attention(
            q, k_cache, v_cache, block_tables, seq_lens, scale, block_size, window
        )
    if not per_sequence:
        return _gathered_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, block_size, window)
    # A batch pads every context to its longest; padding changes the matmuls' shapes and so their rounding.
    rows = [
        _gathered_attention(
            q[b : b + 1], k_cache, v_cache, block_tables[b : b + 1], seq_lens[b : b + 1], scale, block_size, window
        )
        for b in range(q.shape[0])
    ]
    return torch.cat(rows)


def _gathered_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, block_size, window):
    batch, heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    longest = int(seq_lens.max())
    num_blocks = -(-longest // block_size)
    length = num_blocks * block_size
    ids = block_tables[:, :num_blocks].reshape(-1).long()
    # One sequence (a single stream, or batch_invariant's one at a time) attends to exactly its context, so it needs
    # no mask: at a decode step's sizes each tensor op costs more in dispatch than in arithmetic, and the mask was
    # four of them a layer.
    unmasked = batch == 1 and not window
    kept = longest if unmasked else length

    def gather(cache: torch.Tensor) -> torch.Tensor:  # -> [B, kv_heads, kept, head_dim] float32
        blocks = cache.view(-1, block_size * kv_heads * head_dim).index_select(0, ids)
        context = blocks.view(batch, length, kv_heads, head_dim)[:, :kept].transpose(1, 2)
        return context.to(torch.float32, memory_format=torch.contiguous_format)

    keys, values = gather(k_cache), gather(v_cache)
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim).float()
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(scale)  # [B, kv_heads, group, kept]
    if not unmasked:
        scores.masked_fill_(_hidden(length, seq_lens, window)[:, None, None, :], float("-inf"))
    out = torch.matmul(scores.softmax(dim=-1), values)  # [B, kv_heads, group, head_dim]
    return out.reshape(batch, heads, head_dim).to(q.dtype)


def _hidden(length: int, seq_lens: torch.Tensor, window: int) -> torch.Tensor:
    """[B, length] True where a position is not attended: past the sequence's context (the rest of its last block,
    and columns a shorter sequence does not fill) or before its window."""
    pos = torch.arange(length, device=seq_lens.device)[None, :]
    hidden = pos >= seq_lens[:, None]
    if window:
        hidden |= pos < seq_lens[:, None] - window
    return hidden


def traced_decode_attention(
    q: torch.Tensor,  # [B, heads, head_dim]
    k_cache: torch.Tensor,  # [slots, kv_heads, head_dim], in q's dtype
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, width] int32: as many columns as the step's longest context fills, or more
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    block_size: int,
    window: int = 0,
) -> torch.Tensor:
    """Decode attention for a compiled CPU step (cpu_decode.py) to trace, rather than call as an op: written as
    products and sums, with the block gather an index, so Inductor fuses gather, scores, mask, softmax and the
    weighted sum into a few C++ loops that read the cache in place. With the table's width a dynamic size, one
    compile serves every context length. Called as an op from the compiled step, the gathered path above cost
    ~100 us a layer on the 2-core CPU, nearly all of it dispatch (a Python op and ~15 tensor ops at a decode's
    sizes): traced instead, SmolLM2's compiled step for one stream went from 12.0 to 9.3 ms. Scores keep the context
    last, so the softmax runs over contiguous rows, in parallel (over dim 1, Inductor ran it on one thread: 121 vs
    106 us a layer for 8 sequences of 256 tokens, 237 vs 196 for 600)."""
    batch, heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    length = block_tables.shape[1] * block_size
    ids = block_tables.long()

    def context(cache: torch.Tensor) -> torch.Tensor:  # -> [B, kv_heads, 1, length, head_dim] float32
        blocks = cache.view(-1, block_size, kv_heads, head_dim)[ids]  # [B, width, block_size, kv_heads, head_dim]
        return blocks.view(batch, length, kv_heads, head_dim).transpose(1, 2).unsqueeze(2).float()

    grouped = q.view(batch, kv_heads, heads // kv_heads, 1, head_dim).float()
    scores = (grouped * context(k_cache)).sum(-1) * scale  # [B, kv_heads, group, length]
    probs = scores.masked_fill(_hidden(length, seq_lens, window)[:, None, None, :], float("-inf")).softmax(dim=-1)
    out = (probs[..., None] * context(v_cache)).sum(-2)  # [B, kv_heads, group, head_dim]
    return out.reshape(batch, heads, head_dim).to(q.dtype)


def compiled_cpu_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    block_size: int,
    window: int = 0,
) -> torch.Tensor:
    """A compiled CPU decode step's attention (arguments as traced_decode_attention's): the C++ kernel, one op
    called from the compiled step, where it fits; else the attention traced into the step."""
    if cpu_decode_kernel.fits(q, k_cache, block_size):
        return cpu_decode_kernel.decode_attention(
            q, k_cache, v_cache, block_tables, seq_lens, scale, block_size, window
        )
    return traced_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, block_size, window)


def _paged_decode(
    q: torch.Tensor,  # [B, heads, head_dim]
    key: torch.Tensor,  # [B, kv_heads, head_dim] (this step's keys, already rotated)
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [B]
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    block_size: int,
    window: int,
) -> torch.Tensor:
    write_slots(k_cache, slot_mapping, key)
    write_slots(v_cache, slot_mapping, value)
    return paged_decode_attention(q.contiguous(), k_cache, v_cache, block_tables, seq_lens, scale, block_size, window)


# `chatplex::paged_decode`: this step's keys/values written into the cache, then attention; one opaque op, so
# torch.compile neither traces into the kernel nor copies the (mutated) cache. Defined with torch.library's
# low-level calls rather than `torch.library.custom_op`, whose Python wrapper costs ~40 us a call (measured on the
# 2-core CPU: 110 vs 73 us a call with one decode row): a compiled CPU decode step over an FP8 cache calls it once a
# layer (over a cache in the model's dtype it traces the attention instead).
_LIB = torch.library.Library("chatplex", "FRAGMENT")
_LIB.define(
    "paged_decode(Tensor q, Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping, "
    "Tensor block_tables, Tensor seq_lens, float scale, int block_size, int window) -> Tensor",
    tags=(torch.Tag.pt2_compliant_tag,),
)
_LIB.impl("paged_decode", _paged_decode, "CPU")
_LIB.impl("paged_decode", _paged_decode, "CUDA")


@torch.library.register_fake("chatplex::paged_decode", lib=_LIB)
def _paged_decode_fake(
    q, key, value, k_cache, v_cache, slot_mapping, block_tables, seq_lens, scale, block_size, window
):
    return torch.empty_like(q, memory_format=torch.contiguous_format)
