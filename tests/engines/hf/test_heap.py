"""The engine's heap trimmer gives freed glibc heap back to the OS: memory freed under a live allocation (which
plain free() keeps mapped) leaves RSS once it runs, and it runs at most once a period."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from chatplex.engines.hf.heap import HeapTrimmer, _malloc_trim, _rss_mib

pytestmark = pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's; this libc has none")


def test_freed_heap_below_a_live_block_returns_to_the_os():
    # 1,500 blocks of 100 KiB each (under glibc's mmap threshold, so they come from the heap), then all freed but
    # the last, which keeps the heap's top in place: free() alone cannot shrink it.
    blocks = [np.ones(100 * 1024, dtype=np.uint8) for _ in range(1500)]
    keep = blocks[-1]
    del blocks
    before = _rss_mib()
    trimmer = HeapTrimmer(period_s=0.0)
    trimmer.maybe_trim()
    assert before - _rss_mib() > 100, (before, _rss_mib())
    assert keep.sum() == 100 * 1024


def test_it_trims_at_most_once_a_period(monkeypatch):
    calls = []
    trimmer = HeapTrimmer(period_s=3600.0)
    monkeypatch.setattr(trimmer, "_trim", lambda pad: calls.append(pad) or 1)  # counts calls (the real one: above)
    trimmer.maybe_trim()
    assert calls == []
    trimmer._last -= 3600.0
    trimmer.maybe_trim()
    trimmer.maybe_trim()
    assert calls == [0]


def test_libc_call_is_typed():
    trim = _malloc_trim()
    assert trim.argtypes == [ctypes.c_size_t] and trim.restype is ctypes.c_int


FAULTS_OF_REUSED_BLOCKS = """
import resource, sys
import numpy as np
from chatplex.engines.hf.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()

def step():  # a sampling step's temporaries (8 rows of a 49k vocabulary): float32, float32, float64, float64
    blocks = [np.ones(size << 20, dtype=np.uint8) for size in (1, 1, 3, 3)]
    return sum(len(b) for b in blocks)

def steps():  # on a thread, as the engine's steps run: from an arena of its own, not the main heap
    step()  # once: glibc raises its thresholds as far as these blocks take them
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

import threading
thread = threading.Thread(target=steps)
thread.start()
thread.join()
"""


def test_kept_memory_serves_the_next_block_without_page_faults():
    """A step's 8 MiB of blocks allocated and freed again and again on a thread: with glibc's defaults they are
    fresh pages each time (freed together at the top of the thread's heap, they pass its trim threshold); with the
    thresholds a CPU engine sets, the freed blocks are reused."""
    import subprocess
    import sys

    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSED_BLOCKS, mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    default, kept = faults("default"), faults("keep")
    # 4 KiB faults: ~2,000 a step by default. (Transparent huge pages set to always would fault 2 MiB at a time,
    # fewer faults for the same cost: the ratio holds either way.)
    assert default > 20 * max(kept, 10), (default, kept)
