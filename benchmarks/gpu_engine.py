"""GPU benchmark of the Hugging Face engine (issue 6): chatplex vs sequential `model.generate` vs transformers'
`generate_batch`, against the memory-bandwidth roofline. Random-weight models in real shapes (no download).

W1: one request, 512-token prompt, 256 new tokens (EOS ignored).
W2: 512 requests, prompts uniform in 128..1024, outputs uniform in 128..512 (seed 0), max concurrency 64.

    python benchmarks/gpu_engine.py --shape llama-3.2-1b --out results.json [--sweep] [--skip-baselines] [--compare-sync]

--compare-sync also runs W1 and W2 with the engine's async scheduling off (one step at a time: the host waits for
each step's tokens before it schedules the next), in the same process on the same weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

import torch

from chatplex import ChatModel
from chatplex.engines.hf.kv_cache import bytes_per_token
from chatplex.sampling import build_sampling_params
from chatplex.types import GenerationRequest


def measured_bandwidth(device: torch.device) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written."""
    x = torch.empty(2**30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 10 / (time.perf_counter() - t)


def workload_w2(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(1000, 30000) for _ in range(rng.randint(128, 1024))], rng.randint(128, 512)) for _ in range(n)]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def run_engine(model: ChatModel, work: list[tuple[list[int], int]], concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    ttft, tpot, outs = [], [], []

    async def one(prompt: list[int], new: int) -> None:
        async with sem:
            sp = build_sampling_params({"max_new_tokens": new, "temperature": 0, "ignore_eos": True})
            start = time.perf_counter()
            first = None
            count = 0
            async for delta in model.agenerate(GenerationRequest(sampling=sp, prompt_token_ids=prompt)):
                count += len(delta.token_ids)
                if first is None and delta.token_ids:
                    first = time.perf_counter()
            end = time.perf_counter()
            ttft.append(first - start)
            if count > 1:
                tpot.append((end - first) / (count - 1))
            outs.append(count)

    start = time.perf_counter()
    await asyncio.gather(*(one(p, n) for p, n in work))
    wall = time.perf_counter() - start
    return {
        "requests": len(work), "concurrency": concurrency, "output_tokens": sum(outs), "seconds": wall,
        "output_tok_s": sum(outs) / wall,
        "ttft_p50_ms": 1e3 * pct(ttft, 0.5), "ttft_p99_ms": 1e3 * pct(ttft, 0.99),
        "tpot_p50_ms": 1e3 * pct(tpot, 0.5), "tpot_p99_ms": 1e3 * pct(tpot, 0.99),
    }


def sequential_generate(hf_model, work: list[tuple[list[int], int]]) -> dict:
    """What LLaMA-Factory's HF engine does: one request at a time, dynamic cache."""
    tokens, start = 0, time.perf_counter()
    for prompt, new in work:
        ids = torch.tensor([prompt], device=hf_model.device)
        out = hf_model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        tokens += out.shape[1] - len(prompt)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"requests": len(work), "output_tokens": tokens, "seconds": wall, "output_tok_s": tokens / wall}


def hf_generate_batch(hf_model, work: list[tuple[list[int], int]]) -> dict:
    from transformers import GenerationConfig

    new = int(statistics.mean(n for _, n in work))
    cfg = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=-1, pad_token_id=0)
    start = time.perf_counter()
    out = hf_model.generate_batch(inputs=[p for p, _ in work], generation_config=cfg)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    tokens = sum(len(o.generated_tokens) for o in out.values())
    return {"requests": len(work), "output_tokens": tokens, "seconds": wall, "output_tok_s": tokens / wall,
            "max_new_tokens_each": new}


def greedy_agreement(model: ChatModel, hf_model, n: int = 8, length: int = 32) -> float:
    rng = random.Random(1)
    prompts = [[rng.randrange(1000, 30000) for _ in range(rng.randint(16, 200))] for _ in range(n)]
    sp = build_sampling_params({"max_new_tokens": length, "temperature": 0, "ignore_eos": True})

    async def engine_all():
        async def one(p):
            toks = []
            async for d in model.agenerate(GenerationRequest(sampling=sp, prompt_token_ids=p)):
                toks += d.token_ids
            return toks
        return await asyncio.gather(*(one(p) for p in prompts))

    ours = asyncio.run(engine_all())
    scores = []
    hf_model.set_attn_implementation("sdpa")  # the reference runs transformers' own attention
    for p, mine in zip(prompts, ours):
        ref = hf_model.generate(torch.tensor([p], device=hf_model.device), max_new_tokens=length, eos_token_id=-1,
                                do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        same = 0
        for a, b in zip(mine, ref):
            if a != b:
                break
            same += 1
        scores.append(same / length)  # fraction of the first tokens agreeing before the first divergence
    hf_model.set_attn_implementation("chatplex_paged")
    return sum(scores) / len(scores)


def sync_report(model: ChatModel) -> dict:
    """Where the engine thread makes the host wait for the device: CUDA's sync debug mode on a short mixed run,
    counted by the innermost chatplex / transformers frame."""
    import collections
    import traceback
    import warnings

    counts: collections.Counter = collections.Counter()
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return original(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack() if ("chatplex" in f.filename or "transformers" in f.filename)
                  and "warnings" not in f.filename]
        where = " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in frames[-3:][::-1])
        counts[where] += 1

    warnings.showwarning = record
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        steps = model.stats().steps
        r = asyncio.run(run_engine(model, workload_w2(12, seed=5)[:12], 6))
        steps = model.stats().steps - steps
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = original
    return {"engine_steps": steps, "output_tokens": r["output_tokens"], "syncs": dict(counts.most_common(12))}


def graph_replay_ms(engine) -> dict:
    """Device time of one CUDA-graph decode step per batch size (static buffers as left by the last step)."""
    graphs = engine.runner.graphs
    if graphs is None:
        return {}
    out = {}
    for size in sorted({1, 8, 32, 64, graphs.max_batch} & set(graphs.buckets)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graphs.graphs[size].replay()
        start.record()
        for _ in range(50):
            graphs.graphs[size].replay()
        end.record()
        end.synchronize()
        out[size] = start.elapsed_time(end) / 50
    return out


def run_phased(model: ChatModel, work, concurrency: int) -> dict:
    engine = model.engine
    before = dict(engine.phase_seconds)
    steps = model.stats().steps
    r = asyncio.run(run_engine(model, work, concurrency))
    r["engine_steps"] = model.stats().steps - steps
    r["engine_thread_ms_per_step"] = {k: round(1e3 * (v - before[k]) / max(r["engine_steps"], 1), 3)
                                      for k, v in engine.phase_seconds.items()}
    r["async_scheduling"] = engine.args.model.async_scheduling
    return r


def load_engine(args, **settings) -> ChatModel:
    return ChatModel({"dummy_weights": args.shape, "infer_dtype": "bfloat16", "max_model_len": 2048,
                      "max_num_seqs": 128, "gpu_memory_utilization": 0.7,
                      "max_num_batched_tokens": args.max_num_batched_tokens, **settings})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--out", default=None)
    ap.add_argument("--w2-requests", type=int, default=512)
    ap.add_argument("--seq-requests", type=int, default=3, help="W2 requests for the sequential baseline (a rate)")
    ap.add_argument("--batch-requests", type=int, default=128, help="W2 requests for generate_batch (a rate)")
    ap.add_argument("--sweep", action="store_true", help="throughput at concurrency 1, 8, 32, 64, 128")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--compare-sync", nargs="?", const="all", choices=["w1", "all"],
                    help="also run W1 (and W2, with 'all') with async scheduling off")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--switch-intervals", default="", help="comma-separated GIL switch intervals (s) to compare on "
                    "256 W2 requests before the main rows (the engine sets its own at start)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    args = ap.parse_args()

    device = torch.device("cuda")
    result: dict = {"shape": args.shape, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    bw = measured_bandwidth(device)
    result["bandwidth_GBps"] = bw / 1e9
    t = time.perf_counter()
    model = load_engine(args)
    result["engine_start_s"] = time.perf_counter() - t
    engine = model.engine
    hf_model = engine.model
    weight_bytes = sum(p.numel() * p.element_size() for p in hf_model.parameters())
    kv_tok = bytes_per_token(hf_model.config, torch.bfloat16)
    result["weight_GB"] = weight_bytes / 1e9

    def with_sdpa(fn, *a):
        hf_model.set_attn_implementation("sdpa")
        try:
            return fn(*a)
        finally:
            hf_model.set_attn_implementation("chatplex_paged")

    if not args.skip_agreement:
        result["greedy_agreement_first32"] = greedy_agreement(model, hf_model)

    w1 = [([random.Random(2).randrange(1000, 30000) for _ in range(512)], 256)]
    asyncio.run(run_engine(model, w1, 1))  # warm-up (Triton autotune / first prefill)
    roof_w1 = bw / (weight_bytes + (512 + 128) * kv_tok)
    def run_w1(key: str) -> None:
        r = run_phased(model, w1, 1)
        decode_tok_s = 1e3 / r["tpot_p50_ms"]
        result[key] = {**r, "decode_tok_s": decode_tok_s, "roofline_tok_s": roof_w1, "mbu": decode_tok_s / roof_w1}
        print(key, json.dumps(result[key]), flush=True)

    run_w1("W1")
    result["graph_replay_ms"] = graph_replay_ms(engine)
    print("graph replay ms", result["graph_replay_ms"], flush=True)

    if args.switch_intervals:
        import sys

        engine_default = sys.getswitchinterval()
        result["switch_interval_W2_256"] = {}
        for value in [float(v) for v in args.switch_intervals.split(",")]:
            sys.setswitchinterval(value)
            r = run_phased(model, workload_w2(256, seed=3), 64)
            result["switch_interval_W2_256"][value] = r
            print("switch interval", value, json.dumps(r), flush=True)
        sys.setswitchinterval(engine_default)

    work = workload_w2(args.w2_requests)
    avg_ctx = statistics.mean(len(p) + n / 2 for p, n in work)
    roof_w2 = 64 * bw / (weight_bytes + 64 * avg_ctx * kv_tok)
    def run_w2(key: str) -> None:
        graph_steps = model.engine.runner.graph_steps
        r = run_phased(model, work, 64)
        result[key] = {**r, "roofline_tok_s_at_64": roof_w2, "fraction_of_roofline": r["output_tok_s"] / roof_w2,
                       "graph_steps": model.engine.runner.graph_steps - graph_steps}
        print(key, json.dumps(result[key]), flush=True)

    run_w2("W2")
    result["syncs"] = sync_report(model)
    print("syncs", json.dumps(result["syncs"], indent=1), flush=True)

    if not args.skip_baselines:
        result["W1_sequential_generate"] = with_sdpa(sequential_generate, hf_model, w1)
        result["W2_sequential_generate"] = with_sdpa(sequential_generate, hf_model, work[: args.seq_requests])
        try:
            result["W2_generate_batch"] = with_sdpa(hf_generate_batch, hf_model, work[: args.batch_requests])
        except Exception as e:  # report, don't lose the other rows
            result["W2_generate_batch"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(json.dumps({k: result[k] for k in result if "generate" in k}, indent=1), flush=True)

    if args.sweep:
        result["sweep"] = []
        for c in (1, 8, 32, 64, 128):
            r = asyncio.run(run_engine(model, workload_w2(max(16, 2 * c), seed=c), c))
            result["sweep"].append(r)
            print(json.dumps(r), flush=True)
    model.close()
    if args.compare_sync:  # the same rows from an engine started with async scheduling off
        model = load_engine(args, async_scheduling=False)
        asyncio.run(run_engine(model, w1, 1))  # warm-up
        run_w1("W1_sync")
        if args.compare_sync == "all":
            run_w2("W2_sync")
        model.close()
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
