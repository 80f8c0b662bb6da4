"""Python's GIL switch interval, lowered while any CUDA engine of this process runs.

An engine thread releases the GIL in every device call and must get it back at once to keep the GPU fed; at
Python's default 5 ms a busy event-loop thread holds it that long each time. The setting is process-wide, so it is
reference-counted: the first engine lowers it, the last one to close gives the process its own setting back (unless
someone else changed it in between), and closing one of two engines leaves the other's setting alone.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()
_holders = 0
_saved: float | None = None  # the process's own interval, while lowered
_lowered_to: float | None = None


def lower(interval: float) -> None:
    """Hold the switch interval at `interval` (or lower, if it already is) until the matching `release`."""
    global _holders, _saved, _lowered_to
    with _lock:
        if _holders == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved, interval))
            _lowered_to = sys.getswitchinterval()  # as Python stores it (microseconds), to compare with later
        _holders += 1


def release() -> None:
    """Let go of one `lower`; the last one restores the process's own interval."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0 and _saved is not None:
            if sys.getswitchinterval() == _lowered_to:
                sys.setswitchinterval(_saved)
            _saved = None
