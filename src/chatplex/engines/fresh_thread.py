"""Run blocking torch work off the event loop in a thread that ends when the work does.

On the CPU, torch parallelises with OpenMP, and every thread that runs a parallel region keeps its own pool of
OpenMP workers for as long as it lives. While another such thread is alive, the engine thread's forward passes
ran 1.5x slower on this project's 2-core machines (libgomp: more managed threads than cores; measured 100 vs 150
ms per SmolLM2 forward pass, and gone as soon as the other thread exits). asyncio's default executor keeps its
threads alive, so model loading and media preprocessing (video processors run torch ops) go through here instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_in_fresh_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a new thread that exits afterwards; its result or exception comes back to the caller."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # noqa: BLE001 - delivered to the awaiting coroutine, which raises it
            result, error = None, e
        loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=f"chatplex-{getattr(fn, '__name__', 'work')}", daemon=True).start()
    return await future
