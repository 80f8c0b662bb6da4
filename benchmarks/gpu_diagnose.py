"""Developer diagnostics on the GPU: where the engine's host time goes under W2-style traffic (concurrency 64),
with the same engine settings as gpu_engine.py: engine-thread phases split by kind of step, then torch.profiler's
view of host (CPU) and device time per operator.

    python benchmarks/gpu_diagnose.py [shape] [requests]
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from gpu_engine import run_engine, workload_w2  # noqa: E402

from chatplex import ChatModel  # noqa: E402

shape = sys.argv[1] if len(sys.argv) > 1 else "llama-3.2-1b"
requests = int(sys.argv[2]) if len(sys.argv) > 2 else 128
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
g = engine.runner.graph_steps - graph_steps
print("steps", n, "graph steps", g, "eager steps", n - g)
print({k: round(1e3 * (v - before[k]) / n, 3) for k, v in engine.phase_seconds.items()}, "ms/step")
print("launch ms per eager step", round(1e3 * (engine.phase_seconds["launch_eager"] - before["launch_eager"]) / max(n - g, 1), 2),
      "per graph step", round(1e3 * (engine.phase_seconds["launch"] - before["launch"] - engine.phase_seconds["launch_eager"]
                                    + before["launch_eager"]) / max(g, 1), 2), flush=True)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    asyncio.run(run_engine(m, workload_w2(48, seed=4), 48))
m.close()
table = prof.key_averages()
print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=55), flush=True)
print(table.table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=55), flush=True)
