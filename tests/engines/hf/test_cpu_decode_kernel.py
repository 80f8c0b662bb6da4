"""The CPU decode-attention kernel (cpu_decode_kernel.py, built here with the machine's compiler): the same
attention as the float32 reference path (paged_decode._gathered_attention) over bfloat16 caches, for the head sizes
it is built for, grouped query heads in fours and not, sliding windows, contexts that end inside a block and
garbage (NaN) in a block's unused slots; a compiled CPU decode step runs it; without a build (no compiler, a failed
one) it says why and the attention stays as it was. Skipped on CPUs without AVX512_BF16 (this project's CI
machines have it)."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from unittest import mock

import pytest
import torch
from tests.engines.hf.tiny_llama import compiled_and_eager_logits, write_tiny_llama

from chatplex.engines.hf import cpu_decode_kernel
from chatplex.engines.hf.paged_decode import _gathered_attention

pytestmark = pytest.mark.skipif(not cpu_decode_kernel.cpu_supports(), reason="this CPU has no AVX512_BF16")

BLOCK = 16


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert cpu_decode_kernel.load()


def paged_case(lens: list[int], heads: int, kv_heads: int, head_dim: int, seed: int = 0, block: int = BLOCK):
    """A bfloat16 cache of 64 blocks, NaN wherever no sequence has written (so reading past a context shows),
    each sequence's blocks scattered over it; a query per sequence (a strided view, as the compiled step passes)."""
    g = torch.Generator().manual_seed(seed)
    widths = [-(-n // block) for n in lens]
    k_cache = torch.full((64 * block, kv_heads, head_dim), float("nan"), dtype=torch.bfloat16)
    v_cache = k_cache.clone()
    order = (torch.randperm(63, generator=g) + 1).tolist()
    tables = torch.zeros(len(lens), max(widths), dtype=torch.int32)
    for b, (n, w) in enumerate(zip(lens, widths)):
        tables[b, :w] = torch.tensor(order[:w], dtype=torch.int32)
        order = order[w:]
        for pos in range(n):
            slot = int(tables[b, pos // block]) * block + pos % block
            k_cache[slot] = torch.randn(kv_heads, head_dim, generator=g)
            v_cache[slot] = torch.randn(kv_heads, head_dim, generator=g)
    q = torch.randn(heads, len(lens), head_dim, generator=g).to(torch.bfloat16).transpose(0, 1)
    return q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32)


def reference(q, k_cache, v_cache, tables, lens, window, block=BLOCK):
    """The float32 path, one sequence at a time (its mask would meet the NaN padding: NaN * 0 is NaN)."""
    rows = []
    clean_k, clean_v = k_cache.nan_to_num(0.0), v_cache.nan_to_num(0.0)
    for b in range(q.shape[0]):
        width = -(-int(lens[b]) // block)
        rows.append(_gathered_attention(q[b : b + 1], clean_k, clean_v, tables[b : b + 1, :width], lens[b : b + 1],
                                        q.shape[-1] ** -0.5, block, window))
    return torch.cat(rows)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim"),
    [(9, 3, 64), (4, 4, 64), (10, 2, 64), (8, 1, 128), (6, 2, 96), (2, 1, 256)],
)
@pytest.mark.parametrize("window", [0, 20])
@pytest.mark.parametrize("block", [16, 32])
def test_kernel_matches_the_float32_path(heads, kv_heads, head_dim, window, block):
    lens = [1, 15, 16, 17, 33, 150]
    q, k_cache, v_cache, tables, seq_lens = paged_case(lens, heads, kv_heads, head_dim, block=block)
    got = cpu_decode_kernel.decode_attention(q, k_cache, v_cache, tables, seq_lens, head_dim**-0.5, block, window)
    want = reference(q, k_cache, v_cache, tables, seq_lens, window, block)
    assert got.shape == want.shape and got.dtype == torch.bfloat16 and not got.isnan().any()
    # Both round a float32 result to bfloat16 once; the sums' order differs.
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1e-2)


def test_one_sequence_gives_the_same_bits_alone_or_in_a_batch():
    q, k_cache, v_cache, tables, lens = paged_case([40, 7, 129], 9, 3, 64, seed=1)
    batch = cpu_decode_kernel.decode_attention(q, k_cache, v_cache, tables, lens, 0.125, BLOCK, 0)
    alone = cpu_decode_kernel.decode_attention(q[2:], k_cache, v_cache, tables[2:], lens[2:], 0.125, BLOCK, 0)
    assert torch.equal(batch[2:], alone)


def test_the_op_is_well_formed_for_torch_compile():
    q, k_cache, v_cache, tables, lens = paged_case([5, 40], 9, 3, 64)
    torch.library.opcheck(torch.ops.chatplex.cpu_decode_attention.default,
                          (q, k_cache, v_cache, tables, lens, 0.125, BLOCK, 0))


def test_bad_inputs_are_refused_not_read_out_of_bounds():
    q, k_cache, v_cache, tables, lens = paged_case([5, 40], 9, 3, 64)
    attend = cpu_decode_kernel.decode_attention
    with pytest.raises(RuntimeError, match="table columns"):
        attend(q, k_cache, v_cache, tables, torch.tensor([5, 10_000], dtype=torch.int32), 0.125, BLOCK, 0)
    with pytest.raises(RuntimeError, match="outside the cache"):
        attend(q, k_cache, v_cache, tables + 1000, lens, 0.125, BLOCK, 0)
    with pytest.raises(RuntimeError, match="a length per sequence"):
        attend(q, k_cache, v_cache, tables[:1], lens, 0.125, BLOCK, 0)
    with pytest.raises(RuntimeError, match="multiple of kv_heads"):
        attend(q[:, :8], k_cache, v_cache, tables, lens, 0.125, BLOCK, 0)


def test_only_bfloat16_and_whole_16_position_groups_fit():
    q, k_cache, _, _, _ = paged_case([3], 9, 3, 64)
    assert cpu_decode_kernel.fits(q, k_cache, BLOCK)
    assert not cpu_decode_kernel.fits(q.float(), k_cache.float(), BLOCK)
    assert not cpu_decode_kernel.fits(q, k_cache, 8)
    assert not cpu_decode_kernel.fits(q[..., :32], k_cache[..., :32], BLOCK)  # head size not built


def test_compiled_decode_step_runs_the_kernel_and_agrees_with_the_torch_ops(tmp_path):
    """A compiled step's logits (the kernel inside, once a layer) against an eager step of the same inputs with the
    kernel kept out (the float32 gathered path), bfloat16."""
    from chatplex import ChatModel

    vocab = 512
    model_dir = write_tiny_llama(tmp_path, vocab, 512, hidden_size=384, num_attention_heads=6, num_key_value_heads=2)
    args = {"model_name_or_path": model_dir, "infer_dtype": "bfloat16", "max_num_seqs": 8, "kv_block_size": BLOCK,
            "kv_cache_memory_gb": 0.05, "device": "cpu", "compile": True}
    with ChatModel(args) as model:
        before = cpu_decode_kernel.calls()
        kernel_out = partial(mock.patch.object, cpu_decode_kernel, "fits", lambda *_: False)
        compiled, eager = compiled_and_eager_logits(model, vocab, BLOCK, eager_context=kernel_out)
        layers = cpu_decode_kernel.calls() - before
    assert layers == 2
    # bfloat16 activations between the layers, rounded apart by the fused compiled ops: within 2% of the logits' range.
    torch.testing.assert_close(compiled, eager, atol=0.02 * float(eager.abs().max()), rtol=0.02)
    assert torch.equal(compiled.argmax(-1), eager.argmax(-1))


@pytest.mark.parametrize(
    ("setting", "level", "said"),
    [({"CXX": "false"}, "WARNING", "did not build"), ({"CXX": "no-such-compiler"}, "INFO", "no C++ compiler"),
     ({"CHATPLEX_CPU_DECODE_KERNEL": "0"}, "INFO", "CHATPLEX_CPU_DECODE_KERNEL=0")],
)
def test_without_a_build_decode_attention_stays_as_torch_ops_and_says_why(tmp_path, setting, level, said):
    env = {**os.environ, "CHATPLEX_CACHE_DIR": str(tmp_path), **setting}
    code = (
        "import logging; logging.basicConfig(format='%(levelname)s %(message)s', level=logging.INFO); "
        "from chatplex.engines.hf import cpu_decode_kernel as k; print(k.load(), k._loaded)"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False False"
    assert any(line.startswith(level) and said in line for line in run.stderr.splitlines()), run.stderr


def test_the_build_is_kept_and_reused(tmp_path):
    """A second process loads the first one's build: the same file, not rebuilt (a rebuild renames a new file onto
    it, a new inode)."""
    env = {**os.environ, "CHATPLEX_CACHE_DIR": str(tmp_path)}
    code = (
        "import glob, os; from chatplex.engines.hf import cpu_decode_kernel as k; assert k.load(); "
        "[path] = glob.glob(os.path.join(os.environ['CHATPLEX_CACHE_DIR'], 'cpu_kernels', '*.so')); "
        "print(path, os.stat(path).st_ino, os.stat(path).st_mtime_ns)"
    )
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert first == second and ".so " in first
