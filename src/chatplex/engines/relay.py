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
    consume it with `contextlib.aclosing` so that happens at once, not at garbage collection. Deltas waiting
    together are merged per sequence (the module docstring says why)."""
    finished = 0
    try:
        while finished < sequences:
            for item in _merged(await _waiting(queue)):
                if isinstance(item, BaseException):
                    raise item
                finished += is_last(item)
                yield item
    finally:
        if finished < sequences:
            on_abandon()


async def _waiting(queue: asyncio.Queue) -> list[Any]:
    """The next item and every one already behind it, up to an exception (which ends the request)."""
    items = [await queue.get()]
    while not isinstance(items[-1], BaseException) and not queue.empty():
        items.append(queue.get_nowait())
    return items


def _merged(items: list[Any]) -> list[Any]:
    """`items` with each sequence's consecutive deltas as one, at its first delta's place (sequences of one request
    are independent: n > 1 interleaves them step by step). Only deltas merge, never across a finish, and nothing
    else the engine sends is passed by a later delta."""
    runs: list[Any] = []  # an item, or a list of deltas of one sequence to merge
    open_runs: dict[int, list[Delta]] = {}  # sequence index -> its run still taking deltas
    for item in items:
        if isinstance(item, Delta):
            run = open_runs.get(item.index)
            if run is None:
                run = open_runs[item.index] = []
                runs.append(run)
            run.append(item)
            if item.finish_reason is not None:
                del open_runs[item.index]
        else:  # no later delta may move before it
            open_runs.clear()
            runs.append(item)
    return [_merge(run) if isinstance(run, list) else run for run in runs]


def _merge(deltas: list[Delta]) -> Delta:
    """One delta for consecutive ones of a sequence: text, tokens and logprobs joined, running totals and the finish
    from the last, the cached-prompt count from the first that says it."""
    if len(deltas) == 1:
        return deltas[0]
    logprobs = [d.logprobs for d in deltas]
    return dataclasses.replace(
        deltas[-1],
        text="".join(d.text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        logprobs=[lp for part in logprobs if part for lp in part] if any(p is not None for p in logprobs) else None,
        cached_tokens=next((d.cached_tokens for d in deltas if d.cached_tokens is not None), None),
    )
