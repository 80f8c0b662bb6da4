"""Present a benchmark result: a text table, a JSON file, a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from chatplex.bench.metrics import Distribution
from chatplex.bench.runner import BenchResult

WIDTH = 52


def _row(label: str, value: object) -> str:
    if isinstance(value, float):
        value = f"{value:.2f}"
    elif value is None:
        value = "n/a"
    return f"{label:<38}{value:>14}"


def _distribution_rows(name: str, long_name: str, dist: Distribution) -> list[str]:
    rows = [f"{long_name:-^{WIDTH}}", _row(f"Mean {name} (ms):", dist.mean), _row(f"Median {name} (ms):", dist.median)]
    rows += [_row(f"P{key[1:]} {name} (ms):", value) for key, value in dist.percentiles.items()]
    return rows


def format_result(result: BenchResult) -> str:
    """The result as a table in the layout of `vllm bench serve`."""
    s = result.summary
    cfg = result.config
    rate = "inf" if cfg.request_rate == float("inf") else f"{cfg.request_rate:g}"
    rows = [
        f"{' Serving Benchmark Result ':=^{WIDTH}}",
        _row("Model:", result.model),
        _row("Endpoint:", cfg.endpoint),
        _row("Request rate (req/s):", rate),
        _row("Max concurrency:", cfg.max_concurrency or "none"),
        _row("Successful requests:", s.completed),
        _row("Failed requests:", s.failed),
        _row("Benchmark duration (s):", s.duration),
        _row("Total input tokens:", s.total_input_tokens),
        _row("Total generated tokens:", s.total_output_tokens),
        _row("Peak concurrent requests:", s.max_concurrent_requests),
        _row("Request throughput (req/s):", s.request_throughput),
        _row("Output token throughput (tok/s):", s.output_throughput),
        _row("Total token throughput (tok/s):", s.total_token_throughput),
    ]
    rows += _distribution_rows("TTFT", " Time to First Token ", s.ttft)
    rows += _distribution_rows("TPOT", " Time per Output Token (excl. 1st token) ", s.tpot)
    rows += _distribution_rows("ITL", " Inter-token Latency ", s.itl)
    rows += _distribution_rows("E2EL", " End-to-end Latency ", s.e2e)
    errors = sorted({m.error for m in result.requests if m.error})
    if errors:
        rows.append(f"{' Errors ':-^{WIDTH}}")
        rows += [f"  {e[: WIDTH * 2]}" for e in errors[:5]]
    rows.append("=" * WIDTH)
    return "\n".join(rows)


def write_json(result: BenchResult, path: str) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


def write_plot(result: BenchResult, path: str) -> None:
    """Four panels: TTFT and ITL histograms, latency per request over time, cumulative output tokens."""
    import matplotlib

    matplotlib.use("Agg")  # no display; only files
    import matplotlib.pyplot as plt

    ok = [m for m in result.requests if m.ok]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    ax[0, 0].hist([m.ttft * 1000 for m in ok if m.ttft is not None], bins=30, color="tab:blue")
    ax[0, 0].set(title="Time to first token", xlabel="ms", ylabel="requests")
    ax[0, 1].hist([g * 1000 for m in ok for g in m.itls], bins=50, color="tab:orange")
    ax[0, 1].set(title="Inter-token latency", xlabel="ms", ylabel="gaps")
    ax[1, 0].scatter([m.start for m in ok], [m.e2e for m in ok], s=10, label="end-to-end")
    ax[1, 0].scatter([m.start for m in ok], [m.ttft for m in ok], s=10, label="TTFT")
    ax[1, 0].set(title="Latency by send time", xlabel="sent at (s)", ylabel="s")
    ax[1, 0].legend()
    arrivals = sorted(t for m in ok for t in m.chunk_offsets)
    ax[1, 1].plot(arrivals, range(1, len(arrivals) + 1), color="tab:green")
    ax[1, 1].set(
        title=f"Output chunks over time ({result.summary.output_throughput:.1f} tok/s)",
        xlabel="s",
        ylabel="chunks received",
    )
    fig.suptitle(f"chatplex bench: {result.model}, {result.num_prompts} requests")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
