"""glibc's heap under a CPU engine: freed memory kept for the next step's reuse, and given back now and then.

Reuse: a CPU step allocates and frees the same large temporaries every time (logits, the sampler's float32 and
float64 copies of them, prefill activations), a few MB each. glibc serves blocks above its mmap threshold (128 KiB
at first, raised as such blocks are freed) with fresh mappings, and returns freed memory at the top of its heap to
the system past its trim threshold; either way the next step's block arrives as untouched pages, which the kernel
faults in and zeroes 4 KiB at a time. Measured on the 2-core CPU: sampling 8 rows of SmolLM2's 49k-token
vocabulary took 2.1 ms, 0.26 ms with the memory kept. So a CPU engine fixes both thresholds (`keep_freed_memory`):
blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit) come from the heap, and up to 256 MiB of freed heap
stays mapped per arena (the engine thread allocates from one of its own) until the trimmer below runs; larger blocks
(KV cache, weights, a long prompt's logits) are mapped and unmapped as before. The setting is the process's from
then on (`ChatModel` on a CPU sets it too), as glibc has no way to ask what it was.

Giving back: under a steady mixed load the server's Python heap stays flat (tracemalloc: no growth over 7 minutes)
while its RSS creeps up: torch's CPU tensors of ever-changing step shapes are malloc'd and freed through glibc,
whose arenas keep freed pages mapped as long as anything above them is live. `malloc_trim(0)` returns those pages
(what the thresholds above keep, too); the engine thread calls it once a period, which costs a few milliseconds
(benchmarks/soak.py measures the effect).

Outside glibc (musl, macOS, Windows) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

TRIM_PERIOD_S = 60.0
# mallopt's parameters (malloc.h) and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def _glibc_function(name: str) -> Any | None:
    """A function of the C library that only glibc has (absent in musl, macOS), or None."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Fix the process's malloc thresholds (see the module docstring); whether glibc took them."""
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    # glibc answers 1 for a setting it took; a libc whose mallopt is a stub (musl) answers 0
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    logger.debug("glibc malloc thresholds %s", "set" if done else "refused")
    return done


def _malloc_trim() -> Callable[[int], int] | None:
    trim = _glibc_function("malloc_trim")
    if trim is not None:
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
