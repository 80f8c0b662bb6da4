"""GPU serving side by side (issue 15): the engine in-process vs behind `chatplex serve`, with its engine in a
process of its own and without, on a W2-like load, plus the multi-turn prefix-cache workload and start-up times.

Servers run first, then the in-process engine (a process that has held the GPU keeps some of its memory).
W2-like: `--num-prompts` random prompts (dummy-tokenizer tokens) of 173..979 tokens, outputs of 96..544 tokens,
EOS ignored, at most `--concurrency` at once: the same prompts for every side. In-process: ChatModel.agenerate;
over HTTP: chatplex's own bench client (`chatplex bench`: chat, then completions). Start-up: seconds from
`ChatModel(...)` / from starting `chatplex serve` to ready; the first start in a fresh machine is cold (no inductor
or Triton cache), later ones warm.

    python benchmarks/gpu_http.py --shape llama-3.2-1b --json out.json [--skip-no-process] [--skip-multi-turn]
        [--api-server-counts 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(__file__))
from engine_driver import drive_engine, machine_info, save_results  # noqa: E402
from http_overhead import start_server, stop_server, summary_row  # noqa: E402
from multi_turn import add_arguments, off_and_on  # noqa: E402

from chatplex import ChatModel  # noqa: E402
from chatplex.bench import BenchConfig, random_prompts, request_metrics, run_benchmark, summarize  # noqa: E402
from chatplex.models.dummy import SHAPES, dummy_tokenizer  # noqa: E402

ENGINE = {"infer_dtype": "bfloat16", "max_model_len": 2048, "max_num_seqs": 128, "gpu_memory_utilization": 0.7}


def engine_flags(shape: str) -> tuple[str, ...]:
    flags = ["--dummy-weights", shape, "--served-model-name", "bench"]
    for key, value in ENGINE.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return tuple(flags)


def in_process(model: ChatModel, prompts: list, concurrency: int) -> dict[str, Any]:
    convs = [p.chat_messages() for p in prompts]
    extras = [{"max_new_tokens": p.output_len} for p in prompts]
    asyncio.run(drive_engine(model, convs[:4], 4, 16, True))  # warm-up
    records, duration = asyncio.run(drive_engine(model, convs, concurrency, 1, True, extras))
    t0 = min(r.start for r in records)
    return summary_row("in-process", summarize([request_metrics(r, t0) for r in records], duration, (50, 99)))


def server_ttft(url: str) -> tuple[float, float]:
    """The server's own time-to-first-token histogram (sum of seconds, count), from its /metrics."""
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "chatplex:time_to_first_token_seconds"]
    found = {sample.name.rsplit("_", 1)[1]: sample.value for sample in family.samples}
    return found["sum"], found["count"]


def over_http(url: str, prompts: list, concurrency: int, endpoint: str, label: str, one_frontend: bool = True
              ) -> dict[str, Any]:
    """One run of the bench client (after four warm-up requests); beside its TTFT, the server's own mean TTFT over
    the same requests, from request received to first token out: what the client and loopback add is the
    difference. (With several frontends each /metrics answer is one frontend's, whichever the connection reaches:
    not read.)"""
    warm_up = BenchConfig(base_url=url, endpoint=endpoint, max_concurrency=4)
    if asyncio.run(run_benchmark(warm_up, prompts[:4], progress=False)).summary.failed:
        raise RuntimeError(f"{label}: a warm-up request failed")
    config = BenchConfig(base_url=url, endpoint=endpoint, max_concurrency=concurrency, percentiles=(50, 99))
    if not one_frontend:
        return summary_row(label, asyncio.run(run_benchmark(config, prompts, progress=False)).summary)
    before = server_ttft(url)
    row = summary_row(label, asyncio.run(run_benchmark(config, prompts, progress=False)).summary)
    after = server_ttft(url)
    if after[1] > before[1]:
        row["server_ttft_mean_ms"] = round(1e3 * (after[0] - before[0]) / (after[1] - before[1]), 1)
    return row


def serve_side(shape: str, process: bool, prompts: list, ns: argparse.Namespace, frontends: int = 1
               ) -> list[dict[str, Any]]:
    label = "engine process" if process else "one process"
    if frontends > 1:
        label += f", {frontends} frontends"
    t = time.perf_counter()
    log = f"/tmp/gpu-http-{shape}-{label.replace(' ', '-').replace(',', '')}.log"
    flags = (*engine_flags(shape), "--engine-process", str(process).lower(), "--api-server-count", str(frontends))
    proc, url = start_server("bfloat16", log, flags, log_level="info")  # the engine's start-up phases in the log
    started = time.perf_counter() - t
    print(f"serve ({label}) ready in {started:.1f} s", flush=True)
    try:
        rows = [over_http(url, prompts, ns.concurrency, "chat", f"HTTP chat, {label}", frontends == 1)]
        if frontends == 1:
            rows.append(over_http(url, prompts, ns.concurrency, "completions", f"HTTP completions, {label}"))
    finally:
        stop_server(proc)
    for row in rows:
        row["start_s"] = round(started, 1)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-3.2-1b")
    parser.add_argument("--num-prompts", type=int, default=512)
    parser.add_argument("--w2-concurrency", type=int, default=64, dest="concurrency_w2")
    parser.add_argument("--skip-no-process", action="store_true", help="no server with the engine in-process")
    parser.add_argument("--skip-multi-turn", action="store_true")
    parser.add_argument("--api-server-counts", default="1",
                        help="comma-separated frontend counts for the engine-process server (chat only past 1)")
    parser.add_argument("--json", default=None)
    add_arguments(parser)
    ns = parser.parse_args()
    info = machine_info()
    results: dict[str, Any] = {}
    tokenizer = dummy_tokenizer(SHAPES[ns.shape][1]["vocab_size"])
    prompts = random_prompts(ns.num_prompts, 576, 320, 0.7, 0, tokenizer)
    multi_turn_concurrency, ns.concurrency = ns.concurrency, ns.concurrency_w2
    # The servers first: a process that has held the GPU keeps part of its memory, which the server would miss.
    served = [row for count in map(int, ns.api_server_counts.split(","))
              for row in serve_side(ns.shape, True, prompts, ns, count)]
    if not ns.skip_no_process:
        served += serve_side(ns.shape, False, prompts, ns)
    t = time.perf_counter()
    with ChatModel({"dummy_weights": ns.shape, **ENGINE}) as model:
        results["in_process_start_s"] = round(time.perf_counter() - t, 1)
        print(f"ChatModel ready in {results['in_process_start_s']} s", flush=True)
        rows = [in_process(model, prompts, ns.concurrency), *served]
        print(json.dumps(rows[0]), flush=True)
        if not ns.skip_multi_turn:
            ns.concurrency = multi_turn_concurrency
            results["multi_turn"] = off_and_on(model, ns)
    results["w2"] = rows
    base = rows[0]["output_tok_s"]
    print(f"\n{'side':<46}{'tok/s':>9}{'vs in-process':>15}{'TTFT p50':>10}{'TTFT p99':>10}{'TPOT p50':>10}"
          f"{'ITL p99':>9}{'start s':>9}{'TTFT mean':>10}{'server':>8}")
    for r in rows:
        print(f"{r['side']:<46}{r['output_tok_s']:>9.0f}{r['output_tok_s'] / base:>14.1%}{r['ttft_p50_ms']:>10.1f}"
              f"{r['ttft_p99_ms']:>10.1f}{r['tpot_p50_ms']:>10.2f}{r['itl_p99_ms']:>9.1f}"
              f"{r.get('start_s', results['in_process_start_s']):>9}{r['ttft_mean_ms']:>10.1f}"
              f"{r.get('server_ttft_mean_ms', ''):>8}")
    save_results(ns.json, info, ns, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
