"""N concurrent chat streams through chatplex's engine vs. sequential `model.generate` (LLaMA-Factory's HF engine).

Same model (the embedded SmolLM2-135M-Instruct), same prompts, same max_new_tokens, greedy, same dtype, in one
run. Every request arrives at t=0, so TTFT includes waiting for earlier requests. With --ignore-eos (the default)
both sides generate exactly max_new_tokens per request, so they do the same work.

    .venv/bin/python benchmarks/concurrent_chat.py                      # 8 streams, fp32 and auto
    .venv/bin/python benchmarks/concurrent_chat.py --concurrency 16 --dtypes float32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys

from engine_driver import (
    chat_messages, in_ended_thread, load_baseline, machine_info, run_baseline, run_engine, run_static_batch,
    save_results,
)

from chatplex import ChatModel
from chatplex.bench import request_metrics, summarize
from chatplex.models.embedded import embedded_model_dir


def row(label: str, dtype: str, runs: list[tuple[list, float]]) -> dict:
    """Median over repeats of output tok/s and TTFT, via chatplex.bench's arithmetic."""
    summaries = [summarize([request_metrics(r, r.start) for r in recs], duration) for recs, duration in runs]
    # request_metrics(r, r.start) puts every request's start at 0: all arrive together.
    pick = sorted(summaries, key=lambda s: s.output_throughput)[len(summaries) // 2]
    return {
        "engine": label,
        "dtype": dtype,
        "requests": pick.completed,
        "output_tokens": pick.total_output_tokens,
        "duration_s": round(pick.duration, 2),
        "output_tok_s": round(pick.output_throughput, 1),
        "all_runs_tok_s": [round(s.output_throughput, 1) for s in summaries],
        "ttft_mean_ms": round(pick.ttft.mean, 1),
        "ttft_median_ms": round(pick.ttft.median, 1),
        "ttft_p99_ms": round(pick.ttft.percentiles["p99"], 1),
        "tpot_mean_ms": round(pick.tpot.mean, 2) if pick.tpot.mean is not None else None,
    }


def bench_dtype(dtype: str, ns: argparse.Namespace) -> list[dict]:
    convs = chat_messages(ns.concurrency)
    model = ChatModel({"infer_dtype": dtype})
    resolved = str(model.engine.dtype).replace("torch.", "")
    label = f"{dtype} -> {resolved}" if dtype == "auto" else dtype
    try:
        run_engine(model, chat_messages(2), 2, 8, ns.ignore_eos)  # warm-up
        engine_runs = [run_engine(model, convs, ns.concurrency, ns.max_new_tokens, ns.ignore_eos) for _ in range(ns.repeats)]
    finally:
        model.close()
    hf_model, tokenizer = in_ended_thread(load_baseline, embedded_model_dir(), model.engine.dtype)
    in_ended_thread(run_baseline, hf_model, tokenizer, chat_messages(1), 8, ns.ignore_eos)  # warm-up
    base_runs = [
        in_ended_thread(run_baseline, hf_model, tokenizer, convs, ns.max_new_tokens, ns.ignore_eos)
        for _ in range(ns.repeats)
    ]
    rows = [
        row(f"chatplex engine, {ns.concurrency} concurrent", label, engine_runs),
        row("transformers generate, sequential", label, base_runs),
    ]
    if ns.static_batch:
        static = [
            in_ended_thread(run_static_batch, hf_model, tokenizer, convs, ns.max_new_tokens, ns.ignore_eos)
            for _ in range(ns.repeats)
        ]
        rows.append(row(f"(ref) generate, static batch of {ns.concurrency}", label, static))
    del hf_model
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'dtype':<18}{'engine':<36}{'tok/s':>8}{'TTFT mean':>11}{'TTFT p50':>10}{'TPOT':>8}{'tokens':>8}{'time s':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['dtype']:<18}{r['engine']:<36}{r['output_tok_s']:>8}{r['ttft_mean_ms']:>11}{r['ttft_median_ms']:>10}"
            f"{r['tpot_mean_ms']:>8}{r['output_tokens']:>8}{r['duration_s']:>8}"
        )
    print()
    for engine, base in zip(*[[r for r in rows if r["engine"].startswith(k)] for k in ("chatplex", "transformers")]):
        ratio = engine["output_tok_s"] / base["output_tok_s"]
        ttft = base["ttft_mean_ms"] / engine["ttft_mean_ms"]
        print(f"{engine['dtype']}: throughput x{ratio:.2f} vs sequential; mean TTFT {ttft:.2f}x lower")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent streams = requests (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,auto", help="comma-separated infer_dtype values")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; the median is reported")
    parser.add_argument("--stop-at-eos", dest="ignore_eos", action="store_false",
                        help="let requests end at EOS (then the two sides may generate different token counts)")
    parser.add_argument("--static-batch", action="store_true",
                        help="add a reference row: all prompts padded into one transformers generate call")
    parser.add_argument("--json", help="write machine info and rows to this file")
    ns = parser.parse_args()
    info = machine_info()
    print(json.dumps(info))
    rows = [r for dtype in ns.dtypes.split(",") for r in bench_dtype(dtype.strip(), ns)]
    print_table(rows)
    save_results(ns.json, info, ns, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
