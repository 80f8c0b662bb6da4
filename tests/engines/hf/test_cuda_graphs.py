"""On a CUDA GPU: decode steps replayed from CUDA graphs (over the torch.compiled step) emit exactly what eager
steps and transformers' `generate` emit (fp32, greedy), for concurrent requests whose steps mix prefill chunks,
graph replays in several buckets and pending tokens (async scheduling).

This machine has no GPU, so here it skips; it runs on the device machine (BENCHMARKS.md names the call)."""

from __future__ import annotations

import random

import pytest
import torch

from chatplex import ChatModel
from tests.engines.hf.tiny_llama import engine_tokens, generate_tokens, write_tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

NEW_TOKENS = 24
VOCAB = 512


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-cuda"), VOCAB, max_positions=1024)


PROMPTS = [[random.Random(i).randrange(0, VOCAB - 2) for _ in range(n)] for i, n in enumerate([3, 40, 150, 7, 300, 1, 64, 90])]


def run_engine(model_dir: str, **settings) -> tuple[list[list[int]], int]:
    with ChatModel({"model_name_or_path": model_dir, "infer_dtype": "float32", "max_num_seqs": 8,
                    "max_num_batched_tokens": 128, "kv_block_size": 16, **settings}) as model:
        assert model.engine.device.type == "cuda"
        return engine_tokens(model, PROMPTS, [NEW_TOKENS] * len(PROMPTS)), model.engine.runner.graph_steps


def test_graph_replays_equal_eager_steps_and_generate(model_dir):
    expected = generate_tokens(model_dir, PROMPTS, [NEW_TOKENS] * len(PROMPTS), "cuda")
    graphs, graph_steps = run_engine(model_dir)
    eager, eager_graph_steps = run_engine(model_dir, enforce_eager=True)
    assert graph_steps > 0 and eager_graph_steps == 0
    assert eager == expected
    assert graphs == expected
