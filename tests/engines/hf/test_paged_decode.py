"""Decode attention through block tables against plain attention over each sequence's gathered context: the CPU
path of torch ops (always; the C++ kernel kept out: test_cpu_decode_kernel.py tests that), and the Triton kernel
(one pass, and split context with a merge) where Triton runs: on a GPU, or on the CPU under TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import pytest
import torch

from chatplex.engines.hf import cpu_decode_kernel, paged_decode

try:
    import triton
except ImportError:
    triton = None

TRITON_RUNS = triton is not None and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BLOCK_SIZE, KV_HEADS, GROUP, HEAD_DIM = 16, 2, 4, 64


@pytest.fixture(autouse=True)
def torch_ops_on_the_cpu(monkeypatch):
    """The CPU kernel, once an engine in this process has loaded it, would take the CPU cases here."""
    monkeypatch.setattr(cpu_decode_kernel, "fits", lambda *_: False)


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


def scattered_cache(seed: int, dtype: torch.dtype = torch.float32):
    """Four sequences of different lengths (one a single token) in blocks scattered over the cache."""
    torch.manual_seed(seed)
    lens = torch.tensor([1, 70, 200, 17], dtype=torch.int32)
    max_blocks = 16
    num_blocks = 1 + len(lens) * max_blocks
    perm = torch.randperm(num_blocks - 1)[: len(lens) * max_blocks] + 1  # never block 0
    tables = perm.view(len(lens), max_blocks).to(torch.int32)
    k_cache = torch.randn(num_blocks * BLOCK_SIZE, KV_HEADS, HEAD_DIM, dtype=dtype)
    v_cache = torch.randn(num_blocks * BLOCK_SIZE, KV_HEADS, HEAD_DIM, dtype=dtype)
    q = torch.randn(len(lens), KV_HEADS * GROUP, HEAD_DIM, dtype=dtype)
    return q, k_cache, v_cache, tables, lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [0, 37])
def test_cpu_path_matches_attention(dtype, window):
    q, k_cache, v_cache, tables, lens = scattered_cache(window, dtype)
    scale = HEAD_DIM**-0.5
    expected = reference(q, k_cache, v_cache, tables, lens, scale, BLOCK_SIZE, window)
    got = paged_decode.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, BLOCK_SIZE, window)
    assert got.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: only the output's rounding
    assert (got.float() - expected).norm() / expected.norm() < tolerance


def test_cpu_path_per_sequence_gives_each_row_the_bits_it_has_alone():
    """batch_invariant's decode attention (torch ops, one sequence at a time)."""
    q, k_cache, v_cache, tables, lens = scattered_cache(3, torch.bfloat16)
    attend = paged_decode.paged_decode_attention
    batch = attend(q, k_cache, v_cache, tables, lens, 0.125, BLOCK_SIZE, 0, per_sequence=True)
    for b in range(q.shape[0]):
        alone = attend(q[b : b + 1], k_cache, v_cache, tables[b : b + 1], lens[b : b + 1], 0.125, BLOCK_SIZE, 0)
        assert torch.equal(batch[b : b + 1], alone)


@pytest.mark.parametrize("window", [0, 37])
def test_traced_path_matches_attention_compiled_once_for_every_width(window):
    """The attention a compiled CPU decode step traces (cpu_decode.py), given as many table columns as its longest
    context fills or more: eager, and compiled with the width dynamic, where two widths share one compile."""
    from torch._dynamo.utils import counters

    q, k_cache, v_cache, tables, lens = scattered_cache(window + 1, torch.bfloat16)
    scale = HEAD_DIM**-0.5
    expected = reference(q, k_cache, v_cache, tables, lens, scale, BLOCK_SIZE, window)
    traced = torch.compile(paged_decode.traced_decode_attention, fullgraph=True)
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    wide = torch.cat([tables, tables[:, :1]], dim=1)  # as the engine's buffer: a column more than a step can fill
    for width in (13, 16):  # the longest context (200 tokens) fills 13 blocks
        columns = wide[:, :width]
        torch._dynamo.mark_dynamic(columns, 1)
        for attend in (paged_decode.traced_decode_attention, traced):
            got = attend(q, k_cache, v_cache, columns, lens, scale, BLOCK_SIZE, window)
            assert got.dtype == torch.bfloat16
            assert (got.float() - expected).norm() / expected.norm() < 1e-2  # the output's bf16 rounding
    assert counters["stats"]["unique_graphs"] == graphs + 1


def test_op_writes_the_cache_then_attends():
    q, k_cache, v_cache, tables, lens = scattered_cache(1)
    key, value = torch.randn(4, KV_HEADS, HEAD_DIM), torch.randn(4, KV_HEADS, HEAD_DIM)
    last = (lens - 1).long()
    slots = tables[torch.arange(4), last // BLOCK_SIZE].long() * BLOCK_SIZE + last % BLOCK_SIZE
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    expected_k[slots], expected_v[slots] = key, value
    expected = reference(q, expected_k, expected_v, tables, lens, 0.125, BLOCK_SIZE, 0)
    got = torch.ops.chatplex.paged_decode(q, key, value, k_cache, v_cache, slots, tables, lens, 0.125, BLOCK_SIZE, 0)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    assert (got - expected).norm() / expected.norm() < 1e-5


def test_op_registration_passes_torch_library_opcheck():
    """The schema's mutation annotations, the fake (meta) function and the op under AOT dispatch agree with what the
    op does (it is defined with torch.library's low-level calls, which check none of this themselves)."""
    q, k_cache, v_cache, tables, lens = scattered_cache(1)
    key, value = torch.randn(4, KV_HEADS, HEAD_DIM), torch.randn(4, KV_HEADS, HEAD_DIM)
    last = (lens - 1).long()
    slots = tables[torch.arange(4), last // BLOCK_SIZE].long() * BLOCK_SIZE + last % BLOCK_SIZE
    args = (q, key, value, k_cache, v_cache, slots, tables, lens, 0.125, BLOCK_SIZE, 0)
    torch.library.opcheck(torch.ops.chatplex.paged_decode.default, args)


@pytest.mark.skipif(not TRITON_RUNS, reason="needs Triton on a GPU, or TRITON_INTERPRET=1")
@pytest.mark.parametrize("splits", [1, 3, 16])
@pytest.mark.parametrize("window", [0, 37])
def test_kernel_matches_attention(splits, window):
    from chatplex.engines.hf.triton_decode import paged_decode_attention

    q, k_cache, v_cache, tables, lens = scattered_cache(splits * 100 + window)
    scale = HEAD_DIM**-0.5
    expected = reference(q, k_cache, v_cache, tables, lens, scale, BLOCK_SIZE, window)
    got = paged_decode_attention(
        q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), tables.to(DEVICE), lens.to(DEVICE), scale, BLOCK_SIZE,
        window, splits=splits,
    ).float().cpu()
    assert torch.isfinite(got).all()
    assert (got - expected).norm() / expected.norm() < 1e-3


@pytest.mark.parametrize("kv", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("on", ["cpu", "triton"])
def test_fp8_cache_is_read_in_the_query_dtype(kv, on):
    """kv_cache_dtype fp8: the cache holds float8, queries and output stay bfloat16; the op stores this step's keys
    as float8 (clamped: a cast past the format's range would be NaN)."""
    if on == "triton" and not torch.cuda.is_available():
        pytest.skip("the Triton kernel's float8 loads need a GPU")
    device = torch.device("cuda" if on == "triton" else "cpu")
    q, k_cache, v_cache, tables, lens = scattered_cache(7, torch.bfloat16)
    k_cache, v_cache = k_cache.to(kv), v_cache.to(kv)
    key, value = torch.randn(4, KV_HEADS, HEAD_DIM, dtype=torch.bfloat16), torch.randn(4, KV_HEADS, HEAD_DIM)
    key[0, 0, 0] = 1e6  # beyond float8's range
    last = (lens - 1).long()
    slots = tables[torch.arange(4), last // BLOCK_SIZE].long() * BLOCK_SIZE + last % BLOCK_SIZE
    k_dev, v_dev = k_cache.to(device), v_cache.to(device)
    got = torch.ops.chatplex.paged_decode(
        q.to(device), key.to(device), value.to(device), k_dev, v_dev, slots.to(device), tables.to(device),
        lens.to(device), 0.125, BLOCK_SIZE, 0,
    )
    k_cache, v_cache = k_dev.cpu(), v_dev.cpu()
    assert k_cache.dtype == kv and torch.isfinite(k_cache.float()).all()
    assert k_cache[slots[0], 0, 0].float() == torch.finfo(kv).max
    assert torch.equal(v_cache[slots].float(), value.to(kv).float())
    expected = reference(q, k_cache, v_cache, tables, lens, 0.125, BLOCK_SIZE, 0)
    assert got.dtype == torch.bfloat16
    assert (got.float().cpu() - expected).norm() / expected.norm() < 1e-2
