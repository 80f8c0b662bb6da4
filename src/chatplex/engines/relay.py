"""From an engine's worker to the caller: what the worker puts on a request's asyncio queue, as an async stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any


def is_final(delta: Any) -> bool:
    """A sequence's last delta carries its finish reason."""
    return delta.finish_reason is not None


async def relay(
    queue: asyncio.Queue, sequences: int, on_abandon: Callable[[], None], is_last: Callable[[Any], bool] = is_final
) -> AsyncGenerator[Any, None]:
    """Yield the queue's items until each of `sequences` has sent its last one (`is_last`); an exception on the
    queue is raised here. A consumer that stops before that calls `on_abandon` (the engine aborts the request):
    consume it with `contextlib.aclosing` so that happens at once, not at garbage collection."""
    finished = 0
    try:
        while finished < sequences:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            finished += is_last(item)
            yield item
    finally:
        if finished < sequences:
            on_abandon()
