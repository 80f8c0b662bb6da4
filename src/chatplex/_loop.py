"""One background event loop thread that sync methods bridge to."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from typing import Any, TypeVar

from chatplex.errors import EngineClosedError

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str = "chatplex-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for it; Ctrl-C cancels it there too. After `stop` (the model was
        closed) the coroutine is dropped unstarted and the caller gets EngineClosedError."""
        if self.loop.is_closed() or not self._thread.is_alive():
            coro.close()  # never started: without this Python warns it was never awaited
            raise EngineClosedError("This model is closed; create a new ChatModel to use it again.")
        future = None
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            return future.result()
        except (KeyboardInterrupt, SystemExit):
            if future is not None:
                future.cancel()
            raise

    def iterate(self, agen: AsyncGenerator[T, None]) -> Iterator[T]:
        """Iterate an async iterator from sync code; closing the iterator closes the async one on the loop."""
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if self.loop.is_running():
                asyncio.run_coroutine_threadsafe(_close_when_idle(agen), self.loop).result(timeout=30)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


async def _close_when_idle(agen: AsyncGenerator[Any, None]) -> None:
    """Close `agen` once no __anext__ of it is in flight: a Ctrl-C can leave one running on the loop (cancelled and
    still unwinding, or, landing before `run` could cancel it, waiting for its item), and aclose() refuses a
    generator that is running ("asynchronous generator is already running": `chatplex chat` crashed on it)."""
    while getattr(agen, "ag_await", None) is not None:  # native async generators only say so
        await asyncio.sleep(0.005)
    await agen.aclose()
