"""From an engine's worker to the caller: what the worker puts on a request's asyncio queue, as an async stream.

A caller that falls behind its engine (an HTTP frontend busy with other streams' chunks, say) finds several deltas
of a sequence waiting: they come out as one (`merge`), so each step of lag costs it one chunk to build, serialize
and send instead of one per token, and a busy server catches up instead of queueing further behind (a new
request's first token waits behind that queue). A caller that keeps up sees one delta per step, as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Callable
from typing import Any

from chatplex.types import Delta


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
    held: Any = None  # taken off the queue while merging, not merged: the next item
    try:
        while finished < sequences:
            item, held = (held, None) if held is not None else (await queue.get(), None)
            while isinstance(item, Delta) and not queue.empty():
                following = queue.get_nowait()
                merged = merge(item, following)
                if merged is None:
                    held = following
                    break
                item = merged
            if isinstance(item, BaseException):
                raise item
            finished += is_last(item)
            yield item
    finally:
        if finished < sequences:
            on_abandon()


def merge(first: Delta, then: Any) -> Delta | None:
    """One delta for two consecutive ones of the same sequence (None if `then` is not one of those, or `first` ended
    its sequence): text, tokens and logprobs joined, running totals and the finish from the later."""
    if not isinstance(then, Delta) or then.index != first.index or first.finish_reason is not None:
        return None
    if first.reasoning or first.tool_calls or then.reasoning or then.tool_calls:
        return None  # parsed output is not merged (engines relay raw deltas; parsing comes after)
    return dataclasses.replace(
        then,
        text=first.text + then.text,
        token_ids=first.token_ids + then.token_ids,
        logprobs=first.logprobs + then.logprobs
        if first.logprobs is not None and then.logprobs is not None
        else first.logprobs or then.logprobs,
        cached_tokens=first.cached_tokens if first.cached_tokens is not None else then.cached_tokens,
    )
