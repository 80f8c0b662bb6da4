"""What the HTTP layer costs: `chatplex serve` measured by `chatplex bench` vs. the same engine driven in-process.

Same model and dtype, same random prompts (built from the model's tokenizer, sent as one user message), same
max_tokens with ignore_eos, same concurrency. Both sides go through `chatplex.bench.metrics`. The server runs in
a subprocess and the bench client in this process, so on a small CPU the client's own work (SSE parsing) counts
against the HTTP side, as it would for any real client on the same machine. The two sides alternate per round.

    .venv/bin/python benchmarks/http_overhead.py                  # 8 concurrent, 32 requests, 2 rounds
    .venv/bin/python benchmarks/http_overhead.py --dtype float32 --rounds 3 --json out.json

The server side alone is the command line
    chatplex serve --host 127.0.0.1 --port 8000 --infer-dtype auto &
    chatplex bench --base-url http://127.0.0.1:8000/v1 --num-prompts 32 --max-concurrency 8 \\
        --input-len 64 --output-len 64 --tokenizer "$(python -c 'from chatplex.models.embedded import embedded_model_dir as d; print(d())')"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from engine_driver import machine_info, run_engine, save_results

from chatplex import ChatModel
from chatplex.bench import BenchConfig, random_prompts, request_metrics, run_benchmark, summarize
from chatplex.bench.prompts import load_tokenizer
from chatplex.models.embedded import embedded_model_dir


def start_server(dtype: str, log_path: str, extra: tuple[str, ...] = (), log_level: str = "warning"
                 ) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "chatplex.cli.main", "--log-level", log_level, "serve", "--host", "127.0.0.1",
           "--port", str(port), "--infer-dtype", dtype, *extra]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chatplex serve exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"chatplex serve not ready after 300 s; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def server_round(url: str, prompts: list, ns: argparse.Namespace) -> dict:
    config = BenchConfig(base_url=url, max_concurrency=ns.concurrency, num_warmups=2)
    return summary_row("HTTP (chatplex serve + bench)", asyncio.run(run_benchmark(config, prompts, progress=False)).summary)


def engine_round(model: ChatModel, prompts: list, ns: argparse.Namespace) -> dict:
    convs = [p.chat_messages() for p in prompts]
    run_engine(model, convs[:2], 2, 8, True)  # warm-up, as the server side gets
    records, duration = run_engine(model, convs, ns.concurrency, ns.output_len, True)
    t0 = min(r.start for r in records)
    return summary_row("engine in-process (ChatModel.agenerate)", summarize([request_metrics(r, t0) for r in records], duration))


def summary_row(label: str, s) -> dict:
    return {
        "side": label,
        "completed": s.completed,
        "failed": s.failed,
        "output_tokens": s.total_output_tokens,
        "duration_s": round(s.duration, 2),
        "output_tok_s": round(s.output_throughput, 1),
        "ttft_mean_ms": round(s.ttft.mean, 1),
        "tpot_mean_ms": round(s.tpot.mean, 2),
        "itl_median_ms": round(s.itl.median, 2),
        # where the run asked for them (percentiles=(50, 99))
        **{f"{name}_{p}_ms": round(getattr(s, name).percentiles[p], 2)
           for name in ("ttft", "tpot", "itl") for p in ("p50", "p99") if p in getattr(s, name).percentiles},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="auto", help="infer_dtype for both sides (default: auto)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="server/engine alternations (default: 2)")
    parser.add_argument("--json", help="write machine info and every round to this file")
    ns = parser.parse_args()
    info = machine_info()
    print(json.dumps(info))
    tokenizer = load_tokenizer(embedded_model_dir())
    prompts = random_prompts(ns.num_prompts, ns.input_len, ns.output_len, 0.0, 0, tokenizer)
    rounds: list[tuple[dict, dict]] = []
    for i in range(ns.rounds):
        proc, url = start_server(ns.dtype, os.path.join("/tmp", f"chatplex-http-overhead-{os.getpid()}.log"))
        try:
            http = server_round(url, prompts, ns)
        finally:
            stop_server(proc)
        with ChatModel({"infer_dtype": ns.dtype}) as model:
            engine = engine_round(model, prompts, ns)
        rounds.append((http, engine))
        print(f"round {i + 1}: HTTP {http['output_tok_s']} tok/s, engine {engine['output_tok_s']} tok/s", flush=True)
    report(rounds)
    save_results(ns.json, info, ns, rounds=rounds)
    return 0


def report(rounds: list[tuple[dict, dict]]) -> None:
    head = f"{'round':<7}{'side':<42}{'tok/s':>8}{'TTFT mean':>11}{'TPOT':>8}{'ITL p50':>9}{'tokens':>8}{'failed':>8}"
    print(head)
    print("-" * len(head))
    for i, pair in enumerate(rounds, 1):
        for r in reversed(pair):  # engine first
            print(f"{i:<7}{r['side']:<42}{r['output_tok_s']:>8}{r['ttft_mean_ms']:>11}{r['tpot_mean_ms']:>8}"
                  f"{r['itl_median_ms']:>9}{r['output_tokens']:>8}{r['failed']:>8}")
    http = sum(h["output_tok_s"] for h, _ in rounds) / len(rounds)
    engine = sum(e["output_tok_s"] for _, e in rounds) / len(rounds)
    per_round = [f"{1 - h['output_tok_s'] / e['output_tok_s']:+.1%}" for h, e in rounds]
    print(f"\nmean output tok/s: engine {engine:.1f}, HTTP {http:.1f}; the HTTP layer costs {1 - http / engine:.1%} "
          f"(target < 10%); per round: {', '.join(per_round)}")


if __name__ == "__main__":
    sys.exit(main())
