"""Give freed heap memory back to the operating system now and then (glibc only).

Under a steady mixed load the server's Python heap stays flat (tracemalloc: no growth over 7 minutes) while its
RSS creeps up: torch's CPU tensors of ever-changing step shapes are malloc'd and freed through glibc, whose arenas
keep freed pages mapped as long as anything above them is live. `malloc_trim(0)` returns those pages; the engine
thread calls it once a period, which costs a few milliseconds (benchmarks/soak.py measures the effect).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

TRIM_PERIOD_S = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim  # absent outside glibc (musl, macOS)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class HeapTrimmer:
    """`maybe_trim()` after an engine step: trims when `period_s` has passed since the last trim."""

    def __init__(self, period_s: float = TRIM_PERIOD_S) -> None:
        self._trim = _malloc_trim()
        self._period = period_s
        self._last = time.monotonic()

    def maybe_trim(self) -> None:
        if self._trim is None or time.monotonic() - self._last < self._period:
            return
        self._last = time.monotonic()
        if logger.isEnabledFor(logging.DEBUG):
            before = _rss_mib()
            self._trim(0)
            logger.debug("malloc_trim: RSS %.1f -> %.1f MiB", before, _rss_mib())
        else:
            self._trim(0)
