"""Prometheus metrics, every name prefixed `chatplex:`.

Engine gauges and counters (running, waiting, aborted...) are read from `ChatModel.stats()` at scrape time, so
they can never drift from the engine. Latency histograms and token counters are observed per request as its
deltas stream through `Metrics.observe`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chatplex.types import Delta

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)


class _EngineCollector(Collector):
    def __init__(self, get_model: Callable[[], Any]) -> None:
        self._get_model = get_model

    def collect(self) -> Iterator[Metric]:
        model = self._get_model()
        if model is None:
            return
        s = model.stats()
        yield GaugeMetricFamily("chatplex:num_requests_running", "Sequences the engine is generating.", value=s.running)
        yield GaugeMetricFamily("chatplex:num_requests_waiting", "Sequences waiting for a slot.", value=s.waiting)
        yield CounterMetricFamily(
            "chatplex:aborted_requests",
            "Requests aborted before they finished (e.g. client disconnects).",
            value=s.aborted_requests,
        )
        yield CounterMetricFamily(
            "chatplex:finished_requests", "Requests the engine finished.", value=s.finished_requests
        )
        yield CounterMetricFamily(
            "chatplex:num_preemptions", "Sequences preempted for KV-cache space.", value=s.preemptions
        )
        # vLLM's names: prompt tokens of new requests looked up in the prefix cache, and of those, found there.
        yield CounterMetricFamily(
            "chatplex:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries
        )
        yield CounterMetricFamily(
            "chatplex:prefix_cache_hits", "Prompt tokens found in the prefix cache.", value=s.prefix_cache_hits
        )
        rate = s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        yield GaugeMetricFamily("chatplex:prefix_cache_hit_rate", "Prefix cache hits / queries since start.", rate)


class Metrics:
    """The server's metrics registry; `observe` wraps one request's delta stream."""

    def __init__(self, get_model: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(get_model))
        r = self.registry
        self.prompt_tokens = Counter("chatplex:prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("chatplex:generation_tokens", "Tokens generated.", registry=r)
        self.requests = Counter(
            "chatplex:request_success", "Finished sequences by finish reason.", ["finish_reason"], registry=r
        )
        self.ttft = Histogram(
            "chatplex:time_to_first_token_seconds", "Time to first token.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "chatplex:time_per_output_token_seconds",
            "Mean time per output token after the first.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "chatplex:e2e_request_latency_seconds", "End-to-end request latency.", buckets=_LATENCY_BUCKETS, registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def observe(
        self, deltas: AsyncGenerator[Delta, None], started: float | None = None
    ) -> AsyncGenerator[Delta, None]:
        """Pass deltas through, recording latency and token counts; abandoned streams record nothing."""
        start = started if started is not None else time.perf_counter()
        first: float | None = None
        prompt = 0
        finals: dict[int, Delta] = {}
        # Closing the engine's iterator now (not at garbage collection) aborts an abandoned request at once.
        async with aclosing(deltas):
            async for delta in deltas:
                if first is None and (delta.token_ids or delta.text):
                    first = time.perf_counter()
                    self.ttft.observe(first - start)
                prompt = delta.prompt_tokens
                if delta.finish_reason is not None:
                    finals[delta.index] = delta
                    self.requests.labels(delta.finish_reason).inc()
                yield delta
        end = time.perf_counter()
        generated = sum(d.completion_tokens for d in finals.values())
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(generated)
        self.e2e.observe(end - start)
        if first is not None and generated > len(finals):
            self.tpot.observe((end - first) / (generated - len(finals)))
