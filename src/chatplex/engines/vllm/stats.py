"""vLLM's scheduler counters (running and waiting requests), caught through its stat-logger interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase


@dataclass
class SchedulerCounters:
    running: int = 0
    waiting: int = 0
    max_running: int = 0

    def logger_factory(self) -> Any:
        """A factory vLLM calls once per engine core: each logger writes into this object."""
        counters = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(
                self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
            ) -> None:
                if scheduler_stats is not None:
                    counters.running = scheduler_stats.num_running_reqs
                    counters.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                    counters.max_running = max(counters.max_running, counters.running)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger
