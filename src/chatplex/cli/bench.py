"""`chatplex bench`: benchmark any OpenAI-compatible server (like `vllm bench serve`).

Every request streams; the client measures time to first token (TTFT), time per output token (TPOT),
inter-token latency (ITL) and end-to-end latency, and reports throughputs and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
from typing import Any

from chatplex.errors import ConfigError

EPILOG = """\
examples:
  chatplex bench --base-url http://127.0.0.1:8000/v1 --num-prompts 64 --max-concurrency 8 \\
      --input-len 128 --output-len 128 --tokenizer /path/to/model
  chatplex bench --prompts-file prompts.jsonl --request-rate 2 --result-json out.json --plot out.png

A prompts file holds one JSON object a line: {"prompt": "..."} or {"messages": [...]}, optionally with
"output_len". Output tokens come from the server's usage (stream_options.include_usage); servers without it
are counted one token per streamed chunk.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark an OpenAI-compatible server",
        description="Benchmark an OpenAI-compatible server: throughput, TTFT, TPOT, ITL and end-to-end latency.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = parser.add_argument_group("server")
    s.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI base URL (default: %(default)s)")
    s.add_argument("--endpoint", choices=("chat", "completions"), default="chat", help="API to call (default: chat)")
    s.add_argument("--model", help="model name to send (default: the first one at GET /models)")
    s.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY") or os.environ.get("CHATPLEX_API_KEY"),
        help="bearer token (default: $OPENAI_API_KEY, else $CHATPLEX_API_KEY)",
    )
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: %(default)s)")
    p = parser.add_argument_group("prompts")
    p.add_argument("--prompts-file", metavar="FILE.jsonl", help="given prompts instead of random ones")
    p.add_argument("--num-prompts", type=int, default=100, help="requests to send (default: %(default)s)")
    p.add_argument("--input-len", type=int, default=128, help="random prompt length in tokens (default: %(default)s)")
    p.add_argument("--output-len", type=int, default=128, help="max_tokens per request (default: %(default)s)")
    p.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        help="draw lengths uniformly from len*(1-r)..len*(1+r) (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for prompts and arrival times (default: %(default)s)")
    p.add_argument("--tokenizer", metavar="DIR", help="build random prompts from this tokenizer (else from words)")
    r = parser.add_argument_group("load")
    r.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="requests per second, Poisson arrivals; inf sends all at once (default: inf)",
    )
    r.add_argument("--max-concurrency", type=int, help="most requests in flight at once (default: no cap)")
    r.add_argument("--num-warmups", type=int, default=0, help="requests sent (and not measured) first")
    g = parser.add_argument_group("generation")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy)")
    g.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="don't send ignore_eos (servers that know it then generate exactly max_tokens)",
    )
    g.add_argument("--extra-body", metavar="JSON", help="extra request fields, e.g. '{\"top_k\": 1}'")
    o = parser.add_argument_group("output")
    o.add_argument("--percentiles", default="99", help="comma-separated percentiles to report (default: 99)")
    o.add_argument("--result-json", metavar="FILE", help="write the full result (per request too) as JSON")
    o.add_argument("--plot", metavar="FILE.png", help="write latency and throughput plots as PNG")
    o.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def _extra_body(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--extra-body: not valid JSON ({e.msg}).", param="extra_body") from None
    if not isinstance(value, dict):
        raise ConfigError("--extra-body: expected a JSON object.", param="extra_body")
    return value


def _percentiles(raw: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in raw.split(",") if p.strip())
    except ValueError:
        raise ConfigError(
            f"--percentiles: expected numbers separated by commas, got {raw!r}.", param="percentiles"
        ) from None


def run(ns: argparse.Namespace) -> int:
    """Build prompts, run the benchmark, print the table; write JSON and plot if asked. Returns 0, or 1 if any
    request failed."""
    from chatplex.bench import BenchConfig, load_jsonl, random_prompts, run_benchmark
    from chatplex.bench.prompts import load_tokenizer
    from chatplex.bench.report import format_result, write_json, write_plot

    config = BenchConfig(
        base_url=ns.base_url,
        endpoint=ns.endpoint,
        model=ns.model,
        api_key=ns.api_key,
        request_rate=ns.request_rate,
        max_concurrency=ns.max_concurrency,
        temperature=ns.temperature,
        ignore_eos=ns.ignore_eos,
        extra_body=_extra_body(ns.extra_body),
        timeout=ns.timeout,
        num_warmups=ns.num_warmups,
        seed=ns.seed,
        percentiles=_percentiles(ns.percentiles),
    )
    if ns.prompts_file:
        prompts = load_jsonl(ns.prompts_file, ns.output_len, ns.num_prompts)
    else:
        tokenizer = load_tokenizer(ns.tokenizer) if ns.tokenizer else None
        prompts = random_prompts(ns.num_prompts, ns.input_len, ns.output_len, ns.range_ratio, ns.seed, tokenizer)
    result = asyncio.run(run_benchmark(config, prompts, progress=not ns.disable_tqdm))
    print(format_result(result))
    if ns.result_json:
        write_json(result, ns.result_json)
    if ns.plot:
        write_plot(result, ns.plot)
    return 1 if result.summary.failed else 0
