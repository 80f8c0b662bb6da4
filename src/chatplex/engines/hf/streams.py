"""The asyncio side of requests, seen from the engine thread: where each request's deltas go, and how a step's
deltas cross to the event loops (one thread-safe call per loop per step)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from chatplex.engines.hf.sequence import Sequence


@dataclass
class RequestStream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    seqs: list[Sequence] = field(default_factory=list)


def deliver(items: list[tuple[RequestStream, Any]]) -> None:
    """Put each (stream, delta or exception) on its stream's queue, from the engine thread."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
    for stream, item in items:
        by_loop.setdefault(stream.loop, []).append((stream.queue, item))

    def put_all(pairs: list[tuple[asyncio.Queue, Any]]) -> None:
        for queue, item in pairs:
            queue.put_nowait(item)

    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(put_all, pairs)
        except RuntimeError:  # the consumer's loop is closed; nobody is listening
            pass
