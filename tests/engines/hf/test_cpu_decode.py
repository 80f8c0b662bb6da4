"""On a CPU with `compile: true`: decode steps through the torch.compile'd step (cpu_decode.py) emit what
transformers' `generate` emits (float32, greedy), for concurrent requests whose steps mix prefill chunks, compiled
decode steps of several batch sizes (one of them a lone sequence padded to two rows) and finished sequences leaving
the batch; in bfloat16 (the CPU default) one compiled step's logits agree with an eager step's."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from chatplex import ChatModel
from tests.engines.hf.tiny_llama import engine_tokens, generate_tokens, write_tiny_llama

NEW_TOKENS = 16
VOCAB = 512
# Lengths differ, so sequences finish at different steps and the batch shrinks to one.
PROMPTS = [[random.Random(i).randrange(0, VOCAB - 2) for _ in range(n)] for i, n in enumerate([3, 40, 150, 7, 64])]
MAX_NEW = [NEW_TOKENS, NEW_TOKENS - 4, NEW_TOKENS - 8, NEW_TOKENS + 8, NEW_TOKENS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-cpu-compile"), VOCAB, max_positions=512)


def run_engine(model_dir: str, dtype: str, **settings) -> tuple[list[list[int]], int]:
    """Tokens of PROMPTS, all at once, and how many steps ran compiled; no step may recompile after the start."""
    from torch._dynamo.utils import counters

    args = {"model_name_or_path": model_dir, "infer_dtype": dtype, "max_num_seqs": 8, "max_num_batched_tokens": 64,
            "kv_block_size": 16, "kv_cache_memory_gb": 0.05, "device": "cpu", **settings}
    with ChatModel(args) as model:
        graphs_at_start = counters["stats"]["unique_graphs"]

        tokens = engine_tokens(model, PROMPTS, MAX_NEW)
        assert counters["stats"]["unique_graphs"] == graphs_at_start
        return tokens, model.engine.runner.graph_steps


def test_compiled_decode_equals_generate_in_float32(model_dir):
    expected = generate_tokens(model_dir, PROMPTS, MAX_NEW, "cpu")
    compiled, compiled_steps = run_engine(model_dir, "float32", compile=True)
    assert compiled_steps > 0
    assert compiled == expected


def test_compiled_decode_step_matches_the_eager_step_in_bfloat16(model_dir):
    """bfloat16 (the CPU default) rounds differently once Inductor fuses the elementwise ops (it keeps float32
    between them), so greedy tokens may part after many steps; one step's logits must agree closely, row by row."""
    from chatplex.engines.hf.decode_step import decode_forward
    from chatplex.engines.hf.step_inputs import DeviceInputs

    args = {"model_name_or_path": model_dir, "infer_dtype": "bfloat16", "max_num_seqs": 8, "kv_block_size": 16,
            "kv_cache_memory_gb": 0.05, "device": "cpu", "compile": True}
    with ChatModel(args) as model:
        runner = model.engine.runner
        cache, graphs = runner.cache, runner.graphs
        torch.manual_seed(1)
        for k, v in zip(cache.keys, cache.values):
            k.normal_(), v.normal_()
        rows = 5
        lens = torch.tensor([3, 17, 40, 1, 64], dtype=torch.int32)
        tables = torch.arange(1, 1 + rows * 4, dtype=torch.int32).reshape(rows, 4)
        positions = (lens - 1).long()
        slots = tables[torch.arange(rows), positions // 16].long() * 16 + positions % 16
        step = DeviceInputs(torch.randint(0, VOCAB, (rows,)), positions, slots, tables, lens)
        with torch.inference_mode():
            eager = decode_forward(runner.model, cache, step.input_ids[None], positions[None], slots, tables, lens)
            compiled = graphs.replay(step)
    compiled, eager = compiled.float(), eager.float()
    assert compiled.shape == eager.shape == (rows, VOCAB)
    torch.testing.assert_close(compiled, eager, atol=0.25, rtol=0.02)
    assert torch.equal(compiled.argmax(-1), eager.argmax(-1))


def test_compile_is_refused_with_batch_invariant_and_said(model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="chatplex.engines.hf.setup"):
        _, steps = run_engine(model_dir, "bfloat16", compile=True, batch_invariant=True)
    assert steps == 0
    assert "compile: true is not used on a CPU with batch_invariant" in caplog.text
