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
