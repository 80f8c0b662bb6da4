"""Developer diagnostics on the GPU: profiles of the engine thread at W1 (batch 1) and W2 (concurrency 64).

    python benchmarks/gpu_diagnose.py [shape]
"""

from __future__ import annotations

import asyncio
import os
import pstats
import random
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402

from gpu_engine import run_engine, workload_w2  # noqa: E402

from chatplex import ChatModel  # noqa: E402

shape = sys.argv[1] if len(sys.argv) > 1 else "llama-3.2-1b"
for name, work, conc in (
    ("w1", [([random.Random(2).randrange(1000, 30000) for _ in range(512)], 256)] * 2, 1),
    ("w2", workload_w2(128), 64),
):
    path = f"/tmp/{name}.prof"
    os.environ["CHATPLEX_PROFILE"] = path
    m = ChatModel({"dummy_weights": shape, "infer_dtype": "bfloat16", "max_model_len": 2048, "max_num_seqs": 64,
                   "gpu_memory_utilization": 0.5, "max_num_batched_tokens": 4096})
    t = time.perf_counter()
    print(name, asyncio.run(run_engine(m, work, conc)), flush=True)
    m.close()
    del m
    torch.cuda.empty_cache()
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(22)
    stats.sort_stats("cumulative").print_callees("_step")
