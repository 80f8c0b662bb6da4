"""Quantized weights and the FP8 KV cache on a GPU (issue 18): one model shape with random weights, side by side.

Variants (each a fresh ChatModel over a checkpoint written once under --work, so every one loads the same weights
the way a user's checkpoint loads):
    bf16       the checkpoint as it is
    fp8        an FP8 checkpoint made from it by transformers' FineGrainedFP8Config (block-wise, e4m3), loaded as a
               pre-quantized model
    bnb8, bnb4 quantization_bit 8 / 4 (LLaMA-Factory's keys: bitsandbytes, nf4 with double quantization)
    bf16-fp8kv the bf16 weights with kv_cache_dtype fp8
Per variant: start seconds, weight memory (transformers' get_memory_footprint), KV blocks in the same
kv_cache_memory_gb and how many W2-sized sequences they hold, W1 (one request, 512-token prompt, 256 new tokens:
decode tok/s from TPOT p50) and W2 (prompts 128..1024, outputs 128..512, 64 concurrent) output tok/s.

    python benchmarks/quantized.py --shape llama-3.1-8b --variants bf16,fp8,bf16-fp8kv --out results.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import time
import traceback

import torch
from gpu_engine import run_engine, workload_w2

from chatplex import ChatModel
from chatplex.engines.hf import quantization

VARIANTS = {
    "bf16": ("bf16", {}),
    "fp8": ("fp8", {}),
    "bnb8": ("bf16", {"quantization_bit": 8}),
    "bnb4": ("bf16", {"quantization_bit": 4}),
    "bf16-fp8kv": ("bf16", {"kv_cache_dtype": "fp8"}),
}


def write_checkpoints(shape: str, work: str) -> dict[str, float]:
    """bf16 and FP8 checkpoints of the shape's seeded random weights (kept between runs on one machine)."""
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config

    from chatplex.models.dummy import dummy_model, dummy_tokenizer

    took = {}
    bf16, fp8 = os.path.join(work, "bf16"), os.path.join(work, "fp8")
    if not os.path.isfile(os.path.join(bf16, "config.json")):
        t = time.perf_counter()
        model = dummy_model(shape, torch.device("cuda"), torch.bfloat16)
        model.save_pretrained(bf16)
        dummy_tokenizer(model.config.vocab_size).save_pretrained(bf16)
        del model
        took["write_bf16_s"] = time.perf_counter() - t
    if not os.path.isfile(os.path.join(fp8, "config.json")):
        t = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            bf16, dtype=torch.bfloat16, device_map={"": "cuda"}, quantization_config=FineGrainedFP8Config()
        )
        model.save_pretrained(fp8)
        dummy_tokenizer(model.config.vocab_size).save_pretrained(fp8)
        del model
        took["write_fp8_s"] = time.perf_counter() - t
    gc.collect()
    torch.cuda.empty_cache()
    return took


def run_variant(name: str, args: argparse.Namespace) -> dict:
    folder, keys = VARIANTS[name]
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    t = time.perf_counter()
    settings = {"model_name_or_path": os.path.join(args.work, folder), "infer_dtype": "bfloat16",
                "max_model_len": 2048, "max_num_seqs": 64, "kv_cache_memory_gb": args.kv_gb,
                "compile": args.compile, **keys}
    with ChatModel(settings) as model:
        engine = model.engine
        r: dict = {"settings": {k: v for k, v in settings.items() if k != "model_name_or_path"},
                   "start_s": time.perf_counter() - t}
        hf_model = engine.parts.model
        cache = engine.parts.cache
        r["weight_GB"] = hf_model.get_memory_footprint() / 1e9
        r["quantized_as"] = quantization.describe(hf_model) or "not quantized"  # e.g. FP8 that fell back to bf16
        r["allocated_after_start_GB"] = (torch.cuda.memory_allocated() - before) / 1e9
        r["kv_dtype"] = str(cache.keys[0].dtype)
        r["kv_blocks"] = cache.num_blocks
        r["kv_tokens"] = cache.num_blocks * cache.block_size
        work = workload_w2(args.w2_requests)
        mean_len = statistics.mean(len(p) + n for p, n in work)
        r["w2_sequences_that_fit"] = int(r["kv_tokens"] // mean_len)
        r["cuda_graphs"] = engine.runner.graphs is not None
        w1 = [([random.Random(2).randrange(1000, 30000) for _ in range(512)], 256)]
        asyncio.run(run_engine(model, w1, 1))  # warm-up
        w1r = asyncio.run(run_engine(model, w1, 1))
        r["W1"] = {**w1r, "decode_tok_s": 1e3 / w1r["tpot_p50_ms"]}
        r["W2"] = asyncio.run(run_engine(model, work, 64))
    gc.collect()
    torch.cuda.empty_cache()
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--work", default=".qbench", help="where the checkpoints are written (and reused)")
    ap.add_argument("--w2-requests", type=int, default=256)
    ap.add_argument("--kv-gb", type=float, default=12.0, help="the same KV-cache memory for every variant")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode graphs (slower start)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result: dict = {"shape": args.shape, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    result["checkpoints"] = write_checkpoints(args.shape, args.work)
    print("checkpoints", result["checkpoints"], flush=True)
    for name in args.variants.split(","):
        try:
            result[name] = run_variant(name, args)
        except Exception as e:  # report it, keep the other variants' rows
            result[name] = {"error": f"{type(e).__name__}: {e}"[:2000], "trace": traceback.format_exc()[-3000:]}
        print(name, json.dumps(result[name]), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
