"""Serving metrics as pure functions over recorded timestamps: no HTTP, no clock.

Definitions (those of `vllm bench serve`, so numbers compare):
- TTFT: first chunk that carries text minus the moment the request was sent.
- E2E:  the moment the stream ended minus the moment it was sent.
- TPOT: (E2E - TTFT) / (output tokens - 1), per request; undefined for one-token outputs.
- ITL:  gaps between successive text chunks, pooled over all requests.
- Throughputs divide totals over successful requests by the benchmark's wall duration.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class RequestRecord:
    """What the client saw of one request: raw clock readings (seconds) and the server's usage counts."""

    start: float
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried text
    prompt_tokens: int | None = None  # from the server's usage, when it sends one
    completion_tokens: int | None = None
    expected_prompt_tokens: int | None = None  # the client's own count, a fallback for servers without usage
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RequestMetrics:
    """One request's derived metrics. Times in seconds; `start` is relative to the benchmark's start."""

    start: float
    ok: bool
    ttft: float | None = None
    e2e: float | None = None
    tpot: float | None = None
    itls: list[float] = field(default_factory=list)
    chunk_offsets: list[float] = field(default_factory=list)  # chunk arrivals relative to the benchmark start
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


def request_metrics(record: RequestRecord, t0: float = 0.0) -> RequestMetrics:
    """Derive TTFT, E2E, TPOT and ITLs of one request; `t0` is the benchmark's start on the same clock.

    Output tokens come from the server's usage; without one, each text chunk counts as one token.
    """
    start = record.start - t0
    prompt = record.prompt_tokens if record.prompt_tokens is not None else (record.expected_prompt_tokens or 0)
    if not record.ok:
        return RequestMetrics(start=start, ok=False, prompt_tokens=prompt, error=record.error)
    times = record.chunk_times
    if not times:
        return RequestMetrics(start=start, ok=False, prompt_tokens=prompt, error="the stream carried no text")
    output = record.completion_tokens if record.completion_tokens is not None else len(times)
    ttft = times[0] - record.start
    e2e = record.end - record.start
    tpot = (e2e - ttft) / (output - 1) if output > 1 else None
    itls = [b - a for a, b in itertools.pairwise(times)]
    return RequestMetrics(
        start=start,
        ok=True,
        ttft=ttft,
        e2e=e2e,
        tpot=tpot,
        itls=itls,
        chunk_offsets=[t - t0 for t in times],
        prompt_tokens=prompt,
        output_tokens=output,
    )


@dataclass
class Distribution:
    """Mean, median, standard deviation and chosen percentiles of one metric, in milliseconds."""

    mean: float | None
    median: float | None
    std: float | None
    percentiles: dict[str, float | None]

    @classmethod
    def of(cls, seconds: list[float], percentiles: tuple[float, ...]) -> Distribution:
        if not seconds:
            return cls(None, None, None, {_pname(p): None for p in percentiles})
        ms = np.asarray(seconds, dtype=float) * 1000.0
        return cls(
            mean=float(ms.mean()),
            median=float(np.median(ms)),
            std=float(ms.std()),
            percentiles={_pname(p): float(np.percentile(ms, p)) for p in percentiles},
        )


def _pname(p: float) -> str:
    return f"p{p:g}"


@dataclass
class Summary:
    """The benchmark's aggregate result."""

    duration: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    max_concurrent_requests: int
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2e: Distribution

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an interval that ends as another starts does not overlap it)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], ev[1]))
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def summarize(metrics: list[RequestMetrics], duration: float, percentiles: tuple[float, ...] = (99,)) -> Summary:
    """Aggregate per-request metrics over a run that lasted `duration` seconds of wall time."""
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}.")
    ok = [m for m in metrics if m.ok]
    total_in = sum(m.prompt_tokens for m in ok)
    total_out = sum(m.output_tokens for m in ok)
    spans = [(m.start, m.start + m.e2e) for m in ok if m.e2e is not None]
    return Summary(
        duration=duration,
        completed=len(ok),
        failed=len(metrics) - len(ok),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) / duration,
        output_throughput=total_out / duration,
        total_token_throughput=(total_in + total_out) / duration,
        max_concurrent_requests=max_overlap(spans),
        ttft=Distribution.of([m.ttft for m in ok if m.ttft is not None], percentiles),
        tpot=Distribution.of([m.tpot for m in ok if m.tpot is not None], percentiles),
        itl=Distribution.of([gap for m in ok for gap in m.itls], percentiles),
        e2e=Distribution.of([m.e2e for m in ok if m.e2e is not None], percentiles),
    )
