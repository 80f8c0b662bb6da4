"""`chatplex bench`: a serving benchmark client for any OpenAI-compatible server.

prompts.py   random prompts of set lengths, or prompts from a JSONL file
client.py    one streaming request over httpx -> a RequestRecord of clock readings
metrics.py   pure arithmetic: TTFT, TPOT, ITL, E2E, throughputs
runner.py    Poisson arrivals, concurrency cap, progress bar -> BenchResult
report.py    table, JSON file, PNG plot
"""

from chatplex.bench.metrics import Distribution, RequestMetrics, RequestRecord, Summary, request_metrics, summarize
from chatplex.bench.prompts import BenchPrompt, load_jsonl, random_prompts
from chatplex.bench.runner import BenchConfig, BenchResult, arrival_offsets, run_benchmark

__all__ = [
    "BenchConfig",
    "BenchPrompt",
    "BenchResult",
    "Distribution",
    "RequestMetrics",
    "RequestRecord",
    "Summary",
    "arrival_offsets",
    "load_jsonl",
    "random_prompts",
    "request_metrics",
    "run_benchmark",
    "summarize",
]
