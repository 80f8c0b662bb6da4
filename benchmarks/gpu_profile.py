"""Developer tool: CUDA kernel time of one prefill and of eager decode steps (torch.profiler), 1B shape.

    python benchmarks/gpu_profile.py
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from gpu_engine import run_engine  # noqa: E402

from chatplex import ChatModel  # noqa: E402

rng = random.Random(0)
for eager in (False, True):
    m = ChatModel({"dummy_weights": "llama-3.2-1b", "infer_dtype": "bfloat16", "max_model_len": 2048, "max_num_seqs": 64,
                   "gpu_memory_utilization": 0.5, "max_num_batched_tokens": 4096, "enforce_eager": eager})
    prompt = [rng.randrange(1000, 30000) for _ in range(576)]
    asyncio.run(run_engine(m, [(prompt, 2)], 1))  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        r = asyncio.run(run_engine(m, [(prompt, 1)] * 4, 4) if not eager else run_engine(m, [(prompt, 24)], 1))
    print("eager" if eager else "prefill x4", r, flush=True)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60), flush=True)
    m.close()
    del m
    torch.cuda.empty_cache()
