"""Paged decode attention as one Triton kernel: each query token reads its own context through its block table.

Why a kernel: the portable path (attention.py) gathers each sequence's keys and values into a padded tensor
before SDPA, which reads and writes the whole context once more per layer, and its shapes change every step.
This kernel reads the cache in place, takes context lengths from a device tensor, and has fixed launch shapes,
so the decode step can be captured in a CUDA graph. One program handles one sequence and one key/value head, with
all query heads of that group (GQA) in one tile, using an online softmax over tiles of context.

Split context (flash-decoding): at small batch, sequences x key/value heads is far fewer programs than the GPU has
SMs (batch 1 of a Llama-3 model: 8), and each walks its whole context alone, so attention cost latency, not
bandwidth. Then the context is cut into `splits` ranges, one program each, writing a partial (max, sum, output)
that a second kernel merges. The split count depends only on the batch size and head count, so launch shapes stay
fixed for CUDA graphs; it is a run-time argument, not a compile-time one, so a new batch size never waits for a
kernel build (each build stalled every stream for about a second).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs have no Triton; the portable path is used there
    triton = None


if triton is not None:

    @triton.jit
    def _paged_decode_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        o_ptr,
        tables_ptr,
        lens_ptr,
        scale,
        window,
        stride_qb,
        stride_qh,
        stride_kt,
        stride_kh,
        stride_vt,
        stride_vh,
        stride_tb,
        stride_ob,
        stride_oh,
        GROUP: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        KV_BLOCK: tl.constexpr,
        TILE: tl.constexpr,
    ):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        seq_len = tl.load(lens_ptr + b)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, BLOCK_D)
        gmask = g < GROUP
        dmask = d < HEAD_DIM
        heads = kvh * GROUP + g
        q = tl.load(
            q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
            mask=gmask[:, None] & dmask[None, :],
            other=0.0,
        )
        m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
        start = 0
        if window > 0:
            start = tl.maximum(seq_len - window, 0)
        lo = (start // TILE) * TILE
        for t0 in range(lo, seq_len, TILE):
            pos = t0 + tl.arange(0, TILE)
            valid = (pos < seq_len) & (pos >= start)
            blk = tl.load(tables_ptr + b * stride_tb + pos // KV_BLOCK, mask=pos < seq_len, other=0)
            slot = blk.to(tl.int64) * KV_BLOCK + pos % KV_BLOCK
            kv_mask = valid[:, None] & dmask[None, :]
            k = tl.load(k_ptr + slot[:, None] * stride_kt + kvh * stride_kh + d[None, :], mask=kv_mask, other=0.0).to(
                q.dtype
            )
            s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + slot[:, None] * stride_vt + kvh * stride_vh + d[None, :], mask=kv_mask, other=0.0).to(
                q.dtype
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        out = acc / l[:, None]
        tl.store(
            o_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
            out.to(o_ptr.dtype.element_ty),
            mask=gmask[:, None] & dmask[None, :],
        )

    @triton.jit(do_not_specialize=["splits"])
    def _paged_decode_split_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        acc_ptr,
        ml_ptr,
        tables_ptr,
        lens_ptr,
        scale,
        window,
        splits,
        stride_qb,
        stride_qh,
        stride_kt,
        stride_kh,
        stride_vt,
        stride_vh,
        stride_tb,
        GROUP: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        KV_BLOCK: tl.constexpr,
        TILE: tl.constexpr,
    ):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        kv_heads = tl.num_programs(1)
        seq_len = tl.load(lens_ptr + b)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, BLOCK_D)
        gmask = g < GROUP
        dmask = d < HEAD_DIM
        heads = kvh * GROUP + g
        q = tl.load(
            q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
            mask=gmask[:, None] & dmask[None, :],
            other=0.0,
        )
        m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
        start = 0
        if window > 0:
            start = tl.maximum(seq_len - window, 0)
        lo = (start // TILE) * TILE
        per_split = tl.cdiv(tl.cdiv(seq_len - lo, TILE), splits) * TILE
        begin = lo + split * per_split
        end = tl.minimum(seq_len, begin + per_split)
        for t0 in range(begin, end, TILE):
            pos = t0 + tl.arange(0, TILE)
            valid = (pos < end) & (pos >= start)
            blk = tl.load(tables_ptr + b * stride_tb + pos // KV_BLOCK, mask=pos < end, other=0)
            slot = blk.to(tl.int64) * KV_BLOCK + pos % KV_BLOCK
            kv_mask = valid[:, None] & dmask[None, :]
            k = tl.load(k_ptr + slot[:, None] * stride_kt + kvh * stride_kh + d[None, :], mask=kv_mask, other=0.0).to(
                q.dtype
            )
            s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m - m_safe)
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + slot[:, None] * stride_vt + kvh * stride_vh + d[None, :], mask=kv_mask, other=0.0).to(
                q.dtype
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        part = (b * kv_heads + kvh) * splits + split
        tl.store(acc_ptr + part * GROUP_PAD * BLOCK_D + g[:, None] * BLOCK_D + d[None, :], acc)
        tl.store(ml_ptr + part * 2 * GROUP_PAD + g, m)
        tl.store(ml_ptr + part * 2 * GROUP_PAD + GROUP_PAD + g, l)

    @triton.jit(do_not_specialize=["splits"])
    def _merge_splits_kernel(
        acc_ptr,
        ml_ptr,
        o_ptr,
        stride_ob,
        stride_oh,
        splits,
        GROUP: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        kv_heads = tl.num_programs(1)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, BLOCK_D)
        m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
        for split in range(splits):
            part = (b * kv_heads + kvh) * splits + split
            m_s = tl.load(ml_ptr + part * 2 * GROUP_PAD + g)
            l_s = tl.load(ml_ptr + part * 2 * GROUP_PAD + GROUP_PAD + g)
            acc_s = tl.load(acc_ptr + part * GROUP_PAD * BLOCK_D + g[:, None] * BLOCK_D + d[None, :])
            m_new = tl.maximum(m, m_s)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            a = tl.exp(m - m_safe)
            c = tl.exp(m_s - m_safe)
            l = l * a + l_s * c
            acc = acc * a[:, None] + acc_s * c[:, None]
            m = m_new
        out = acc / l[:, None]
        heads = kvh * GROUP + g
        tl.store(
            o_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
            out.to(o_ptr.dtype.element_ty),
            mask=(g < GROUP)[:, None] & (d < HEAD_DIM)[None, :],
        )


_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """The GPU's streaming multiprocessors (asked of the driver once per GPU)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def num_splits(batch: int, kv_heads: int, device: torch.device) -> int:
    """Context splits per (sequence, head): enough programs to fill the SMs about twice, at most 16."""
    return max(1, min(16, -(-2 * sm_count(device) // (batch * kv_heads))))


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


def paged_decode_attention(
    q: torch.Tensor,  # [B, heads, head_dim]
    k_cache: torch.Tensor,  # [slots, kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32, context length including the current token
    scale: float,
    block_size: int,
    window: int = 0,
    splits: int | None = None,  # context splits; None: chosen from the batch size (tests force it)
) -> torch.Tensor:
    batch, heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    out = torch.empty_like(q)
    if splits is None:
        splits = num_splits(batch, kv_heads, q.device) if q.is_cuda else 1
    if splits > 1:
        group_pad = max(16, triton.next_power_of_2(group))
        block_d = max(16, triton.next_power_of_2(head_dim))
        acc = torch.empty(batch * kv_heads * splits * group_pad * block_d, dtype=torch.float32, device=q.device)
        ml = torch.empty(batch * kv_heads * splits * 2 * group_pad, dtype=torch.float32, device=q.device)
        _paged_decode_split_kernel[(batch, kv_heads, splits)](
            q,
            k_cache,
            v_cache,
            acc,
            ml,
            block_tables,
            seq_lens,
            scale,
            window,
            splits,
            q.stride(0),
            q.stride(1),
            k_cache.stride(0),
            k_cache.stride(1),
            v_cache.stride(0),
            v_cache.stride(1),
            block_tables.stride(0),
            GROUP=group,
            GROUP_PAD=group_pad,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            KV_BLOCK=block_size,
            TILE=max(64, block_size),
        )
        _merge_splits_kernel[(batch, kv_heads)](
            acc,
            ml,
            out,
            out.stride(0),
            out.stride(1),
            splits,
            GROUP=group,
            GROUP_PAD=group_pad,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
        )
        return out
    _paged_decode_kernel[(batch, kv_heads)](
        q,
        k_cache,
        v_cache,
        out,
        block_tables,
        seq_lens,
        scale,
        window,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        KV_BLOCK=block_size,
        TILE=max(64, block_size),
    )
    return out
