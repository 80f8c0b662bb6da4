"""Drive a benchmark: send prompts on a Poisson schedule (or all at once) under a concurrency cap, collect
records, summarise."""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from chatplex.bench.client import auth_headers, build_payload, discover_model, endpoint_url, send_request
from chatplex.bench.metrics import RequestMetrics, RequestRecord, Summary, request_metrics, summarize
from chatplex.bench.prompts import BenchPrompt
from chatplex.errors import ChatplexError, ConfigError


@dataclass
class BenchConfig:
    """Where to send requests and how fast. `model=None` asks the server (GET /models)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    endpoint: str = "chat"
    model: str | None = None
    api_key: str | None = None
    request_rate: float = math.inf  # requests per second (Poisson arrivals); inf sends all at once
    max_concurrency: int | None = None  # None: no cap
    temperature: float = 0.0
    ignore_eos: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout: float = 600.0
    num_warmups: int = 0
    seed: int = 0
    percentiles: tuple[float, ...] = (99,)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}.", param="base_url")
        endpoint_url(self.base_url, self.endpoint)  # validates the endpoint name
        if not self.request_rate > 0:
            raise ConfigError(
                f"request_rate must be > 0 (inf for all at once), got {self.request_rate}.", param="request_rate"
            )
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {self.max_concurrency}.", param="max_concurrency")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0, got {self.timeout}.", param="timeout")
        if self.num_warmups < 0:
            raise ConfigError(f"num_warmups must be >= 0, got {self.num_warmups}.", param="num_warmups")
        if not all(0 < p < 100 for p in self.percentiles):
            raise ConfigError(f"percentiles must lie in (0, 100), got {self.percentiles}.", param="percentiles")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("api_key")  # never write secrets into result files
        d["request_rate"] = "inf" if math.isinf(self.request_rate) else self.request_rate
        return d


@dataclass
class BenchResult:
    config: BenchConfig
    model: str
    num_prompts: int
    date: str
    summary: Summary
    requests: list[RequestMetrics]

    def to_dict(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "model": self.model,
            "num_prompts": self.num_prompts,
            "config": self.config.to_dict(),
            "summary": self.summary.to_dict(),
            "requests": [asdict(m) for m in self.requests],
        }


def arrival_offsets(n: int, rate: float, seed: int = 0) -> list[float]:
    """Send times (seconds after the start) of n requests arriving as a Poisson process of `rate` per second."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


async def run_benchmark(config: BenchConfig, prompts: list[BenchPrompt], progress: bool = True) -> BenchResult:
    """Send every prompt as a streaming request and summarise what came back."""
    if not prompts:
        raise ConfigError("num_prompts: no prompts to send.", param="num_prompts")
    url = endpoint_url(config.base_url, config.endpoint)
    headers = auth_headers(config.api_key)
    cap = config.max_concurrency or len(prompts)
    limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
    async with httpx.AsyncClient(timeout=httpx.Timeout(config.timeout, connect=30.0), limits=limits) as client:
        model = config.model or await discover_model(client, config.base_url, headers)

        def send(prompt: BenchPrompt) -> Any:
            payload = build_payload(
                config.endpoint,
                model,
                prompt,
                temperature=config.temperature,
                ignore_eos=config.ignore_eos,
                extra_body=config.extra_body,
            )
            return send_request(client, url, payload, headers, prompt.prompt_tokens)

        for i in range(config.num_warmups):
            warm = await send(prompts[i % len(prompts)])
            if not warm.ok:
                raise ChatplexError(f"warm-up request failed: {warm.error}")
        t0 = time.perf_counter()
        records = await _send_all(send, prompts, config, progress)
        duration = time.perf_counter() - t0
    metrics = [request_metrics(r, t0) for r in records]
    return BenchResult(
        config=config,
        model=model,
        num_prompts=len(prompts),
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        summary=summarize(metrics, duration, config.percentiles),
        requests=metrics,
    )


async def _send_all(send: Any, prompts: list[BenchPrompt], config: BenchConfig, progress: bool) -> list[RequestRecord]:
    from tqdm.auto import tqdm

    gate = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    bar = tqdm(total=len(prompts), disable=not progress, unit="req", desc="chatplex bench")

    async def one(prompt: BenchPrompt) -> RequestRecord:
        if gate is None:
            record = await send(prompt)
        else:
            async with gate:
                record = await send(prompt)
        bar.update(1)
        return record

    start = time.perf_counter()
    tasks = []
    try:
        for prompt, offset in zip(prompts, arrival_offsets(len(prompts), config.request_rate, config.seed)):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(prompt)))
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
