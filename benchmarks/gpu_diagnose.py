"""Developer diagnostics on the GPU: a cProfile of the engine thread over W2-style traffic (concurrency 64), the
same engine settings as gpu_engine.py, with the time split by kind of step.

    python benchmarks/gpu_diagnose.py [shape] [requests]
"""

from __future__ import annotations

import asyncio
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from gpu_engine import run_engine, workload_w2  # noqa: E402

from chatplex import ChatModel  # noqa: E402

shape = sys.argv[1] if len(sys.argv) > 1 else "llama-3.2-1b"
requests = int(sys.argv[2]) if len(sys.argv) > 2 else 128
path = "/tmp/w2.prof"
os.environ["CHATPLEX_PROFILE"] = path
t = time.perf_counter()
m = ChatModel({"dummy_weights": shape, "infer_dtype": "bfloat16", "max_model_len": 2048, "max_num_seqs": 128,
               "gpu_memory_utilization": 0.7, "max_num_batched_tokens": 4096})
print("engine start s", time.perf_counter() - t, flush=True)
asyncio.run(run_engine(m, workload_w2(8, seed=9), 8))  # warm-up
engine = m.engine
before = dict(engine.phase_seconds)
steps, graph_steps = m.stats().steps, engine.runner.graph_steps
print("w2", asyncio.run(run_engine(m, workload_w2(requests), 64)), flush=True)
n = m.stats().steps - steps
print("steps", n, "graph steps", engine.runner.graph_steps - graph_steps)
print({k: round(1e3 * (v - before[k]) / n, 3) for k, v in engine.phase_seconds.items()}, "ms/step")
m.close()
stats = pstats.Stats(path)
stats.sort_stats("tottime").print_stats(30)
stats.sort_stats("cumulative").print_callees("execute|_execute_graph|_forward|sample_async|run\\b|_flat_batch|_metadata")
