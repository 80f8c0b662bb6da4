"""On a CPU with `compile: true`: decode steps through the torch.compile'd step (cpu_decode.py) and steps with
prompt tokens through the compiled prefill step (cpu_prefill.py) emit what transformers' `generate` emits (float32,
greedy), for concurrent requests whose steps mix prefill chunks of several lengths with decodes, compiled decode
steps of several batch sizes (one of them a lone sequence padded to two rows) and finished sequences leaving the
batch, with no compile after the start; in bfloat16 (the CPU default) one compiled step's logits agree with an eager
step's."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from chatplex import ChatModel
from tests.engines.hf.tiny_llama import compiled_and_eager_logits, engine_tokens, generate_tokens, write_tiny_llama

NEW_TOKENS = 16
VOCAB = 512
# Lengths differ, so sequences finish at different steps and the batch shrinks to one.
PROMPTS = [[random.Random(i).randrange(0, VOCAB - 2) for _ in range(n)] for i, n in enumerate([3, 40, 150, 7, 64])]
MAX_NEW = [NEW_TOKENS, NEW_TOKENS - 4, NEW_TOKENS - 8, NEW_TOKENS + 8, NEW_TOKENS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-cpu-compile"), VOCAB, max_positions=512)


def run_engine(model_dir: str, dtype: str, **settings) -> tuple[list[list[int]], int]:
    """Tokens of PROMPTS, all at once, and how many decode steps ran compiled; no step may compile after the start
    (a compiled prefill step, where there is one, must have run)."""
    from torch._dynamo.utils import counters

    args = {"model_name_or_path": model_dir, "infer_dtype": dtype, "max_num_seqs": 8, "max_num_batched_tokens": 64,
            "kv_block_size": 16, "kv_cache_memory_gb": 0.05, "device": "cpu", **settings}
    with ChatModel(args) as model:
        graphs_at_start = counters["stats"]["unique_graphs"]

        tokens = engine_tokens(model, PROMPTS, MAX_NEW)
        assert counters["stats"]["unique_graphs"] == graphs_at_start
        runner = model.engine.runner
        assert runner.prefill is None or runner.prefill.steps > 0
        return tokens, runner.graph_steps


def test_compiled_decode_equals_generate_in_float32(model_dir):
    expected = generate_tokens(model_dir, PROMPTS, MAX_NEW, "cpu")
    compiled, compiled_steps = run_engine(model_dir, "float32", compile=True)
    assert compiled_steps > 0
    assert compiled == expected


def test_a_lone_one_token_prompt_is_a_compiled_decode_step(model_dir):
    """A one-token step is a decode row for the compiled decode step, never the prefill step (whose sizes start at
    two, cpu_prefill.py): generate's tokens, no compile after the start."""
    from torch._dynamo.utils import counters

    args = {"model_name_or_path": model_dir, "infer_dtype": "float32", "max_num_seqs": 8, "kv_block_size": 16,
            "kv_cache_memory_gb": 0.05, "device": "cpu", "compile": True}
    with ChatModel(args) as model:
        graphs_at_start = counters["stats"]["unique_graphs"]
        assert engine_tokens(model, [[7]], [6]) == generate_tokens(model_dir, [[7]], [6], "cpu")
        assert counters["stats"]["unique_graphs"] == graphs_at_start
        assert model.engine.runner.prefill.steps == 0 < model.engine.runner.graph_steps


def test_compiled_decode_over_an_fp8_cache_equals_the_eager_engine(model_dir):
    """Over an FP8 cache the compiled step calls the paged-decode op (as on a GPU) instead of tracing attention: the
    same tokens as the eager engine over the same cache (float32), with no recompile across the steps' widths."""
    eager, eager_steps = run_engine(model_dir, "float32", kv_cache_dtype="fp8_e5m2")
    compiled, compiled_steps = run_engine(model_dir, "float32", compile=True, kv_cache_dtype="fp8_e5m2")
    assert eager_steps == 0 < compiled_steps
    assert compiled == eager


def test_compiled_decode_step_matches_the_eager_step_in_bfloat16(model_dir):
    """bfloat16 (the CPU default) rounds differently once Inductor fuses the elementwise ops (it keeps float32
    between them), so greedy tokens may part after many steps; one step's logits must agree closely, row by row."""
    args = {"model_name_or_path": model_dir, "infer_dtype": "bfloat16", "max_num_seqs": 8, "kv_block_size": 16,
            "kv_cache_memory_gb": 0.05, "device": "cpu", "compile": True}
    with ChatModel(args) as model:
        compiled, eager = compiled_and_eager_logits(model, VOCAB, 16)
    assert compiled.shape == eager.shape == (5, VOCAB)
    torch.testing.assert_close(compiled, eager, atol=0.25, rtol=0.02)
    assert torch.equal(compiled.argmax(-1), eager.argmax(-1))


def test_one_compile_serves_every_cuda_graph_bucket(model_dir):
    """The compiled decode step as the CUDA-graph path builds it (decode_step.DecodeStep, Inductor's defaults, the
    block tables' full width), here on the CPU, where it traces the CPU attention rather than the GPU's op: every
    bucket from the largest (the whole input buffer) down, through sizes equal to the model's KV heads
    (2) and attention heads (4) and to the KV block size (16), compiles once; each size's logits equal the eager
    step's (float32)."""
    from torch._dynamo.utils import counters

    from chatplex.engines.hf.cuda_graphs import bucket_sizes
    from chatplex.engines.hf.decode_step import SMALLEST_COMPILED_BATCH, DecodeStep, StaticDecodeInputs

    args = {"model_name_or_path": model_dir, "infer_dtype": "float32", "max_num_seqs": 8, "kv_block_size": 16,
            "kv_cache_memory_gb": 0.05, "device": "cpu", "compile": False}
    with ChatModel(args) as model, torch.inference_mode():
        runner = model.engine.runner
        buckets = bucket_sizes(40, smallest=SMALLEST_COMPILED_BATCH)
        assert {2, 4, 16, 40} <= set(buckets)
        inputs = StaticDecodeInputs(torch.device("cpu"), buckets[-1], max_blocks=4)
        torch.manual_seed(2)
        inputs.input_ids.random_(0, VOCAB)
        inputs.lens.random_(1, 64)
        inputs.positions.copy_(inputs.lens - 1)
        inputs.tables.copy_(torch.arange(1, 1 + buckets[-1] * 4).reshape(-1, 4))
        rows = torch.arange(buckets[-1])
        inputs.slots.copy_(inputs.tables[rows, inputs.positions // 16].long() * 16 + inputs.positions % 16)
        for k, v in zip(runner.cache.keys, runner.cache.values):
            k.normal_(), v.normal_()
        eager = DecodeStep(runner.model, runner.cache, inputs, compile=False)
        compiled = DecodeStep(runner.model, runner.cache, inputs, compile=True)
        torch._dynamo.reset()  # earlier tests' compiles of decode_forward must not count towards its recompile limit
        graphs_before = counters["stats"]["unique_graphs"]
        for size in reversed(buckets):
            torch.testing.assert_close(compiled(size), eager(size), atol=1e-4, rtol=1e-4)
        assert counters["stats"]["unique_graphs"] == graphs_before + 1


def test_compile_is_refused_with_batch_invariant_and_said(model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="chatplex.engines.hf.setup"):
        _, steps = run_engine(model_dir, "bfloat16", compile=True, batch_invariant=True)
    assert steps == 0
    assert "compile: true is not used on a CPU with batch_invariant" in caplog.text
