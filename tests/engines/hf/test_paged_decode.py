"""The paged decode kernel (one pass, and split context with a merge) against plain attention over each
sequence's gathered context. Runs where Triton runs: on a GPU, or on the CPU under TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from chatplex.engines.hf.triton_decode import paged_decode_attention  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reference(q, k_cache, v_cache, tables, lens, scale, block_size, window):
    out = torch.empty_like(q, dtype=torch.float32)
    group = q.shape[1] // k_cache.shape[1]
    for b in range(q.shape[0]):
        n = int(lens[b])
        pos = torch.arange(n)
        slots = tables[b, pos // block_size].long().cpu() * block_size + pos % block_size
        k = k_cache[slots].float().repeat_interleave(group, dim=1)  # [n, heads, D]
        v = v_cache[slots].float().repeat_interleave(group, dim=1)
        s = torch.einsum("hd,nhd->hn", q[b].float(), k) * scale
        if window:
            s[:, : max(n - window, 0)] = float("-inf")
        out[b] = torch.einsum("hn,nhd->hd", s.softmax(-1), v)
    return out


@pytest.mark.parametrize("splits", [1, 3, 16])
@pytest.mark.parametrize("window", [0, 37])
def test_kernel_matches_attention(splits, window):
    torch.manual_seed(splits * 100 + window)
    block_size, kv_heads, group, head_dim = 16, 2, 4, 64
    lens = torch.tensor([1, 70, 200, 17], dtype=torch.int32)
    max_blocks = 16
    num_blocks = 1 + len(lens) * max_blocks
    perm = torch.randperm(num_blocks - 1)[: len(lens) * max_blocks] + 1  # scattered blocks, never block 0
    tables = perm.view(len(lens), max_blocks).to(torch.int32)
    k_cache = torch.randn(num_blocks * block_size, kv_heads, head_dim)
    v_cache = torch.randn(num_blocks * block_size, kv_heads, head_dim)
    q = torch.randn(len(lens), kv_heads * group, head_dim)
    scale = head_dim**-0.5
    expected = reference(q, k_cache, v_cache, tables, lens, scale, block_size, window)
    got = paged_decode_attention(
        q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), tables.to(DEVICE), lens.to(DEVICE), scale, block_size,
        window, splits=splits,
    ).float().cpu()
    assert torch.isfinite(got).all()
    assert (got - expected).norm() / expected.norm() < 1e-3
