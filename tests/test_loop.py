"""BackgroundLoop.iterate closes its async generator even when a __anext__ of it is still in flight on the loop
(what a Ctrl-C in `chatplex chat` can leave behind): the generator is closed after that item, not refused."""

from __future__ import annotations

import asyncio
import time

from chatplex._loop import BackgroundLoop


def test_closing_waits_for_an_item_in_flight():
    closed = []

    async def slow():
        try:
            for i in range(100):
                await asyncio.sleep(0.1)
                yield i
        finally:
            closed.append(True)

    loop = BackgroundLoop("test-loop")
    try:
        agen = slow()
        items = loop.iterate(agen)
        assert next(items) == 0
        in_flight = asyncio.run_coroutine_threadsafe(agen.__anext__(), loop.loop)  # as a Ctrl-C can leave one
        time.sleep(0.02)
        assert agen.ag_await is not None
        items.close()  # plain aclose() here raised "asynchronous generator is already running"
        assert closed == [True]
        assert in_flight.result(timeout=5) == 1
    finally:
        loop.stop()
