"""Delta streams for the routes: start generation eagerly, merge several requests, and frame SSE.

The first delta is pulled before any response header goes out, so validation, context-length and overload
errors still become proper HTTP statuses. Closing a stream closes the engine's iterator, which aborts the
request inside the engine (this is how a client disconnect stops generation).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from chatplex.chat_model import ChatModel
from chatplex.server.errors import error_payload
from chatplex.server.metrics import Metrics
from chatplex.types import Delta, GenerationRequest

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

T = TypeVar("T")


async def open_deltas(
    chat_model: ChatModel, request: GenerationRequest, metrics: Metrics
) -> AsyncGenerator[Delta, None]:
    """Start a request and wait for its first delta (raising any error now); return the whole stream."""
    gen = metrics.observe(chat_model.agenerate(request))
    try:
        first = await gen.__anext__()
    except BaseException:
        await gen.aclose()
        raise
    return _prepend(first, gen)


async def _prepend(first: Delta, gen: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    async with aclosing(gen):
        yield first
        async for delta in gen:
            yield delta


async def open_all(
    chat_model: ChatModel, requests: list[GenerationRequest], metrics: Metrics
) -> AsyncGenerator[tuple[int, Delta], None]:
    """Start every request (all must start cleanly) and merge their streams as (request index, delta)."""
    streams: list[AsyncGenerator[Delta, None]] = []
    try:
        for request in requests:
            streams.append(await open_deltas(chat_model, request, metrics))
    except BaseException:
        for s in streams:
            await s.aclose()
        raise
    return _merge(streams)


async def _merge(streams: list[AsyncGenerator[Delta, None]]) -> AsyncGenerator[tuple[int, Delta], None]:
    if len(streams) == 1:
        async with aclosing(streams[0]):
            async for delta in streams[0]:
                yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncGenerator[Delta, None]) -> None:
        async with aclosing(stream):
            try:
                async for delta in stream:
                    await queue.put((i, delta))
                await queue.put((i, None))
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
                await queue.put((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sse(data: Any) -> str:
    text = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
    return f"data: {text}\n\n"


async def framed(
    chunks: AsyncGenerator[T, None],
    frame: Callable[[T], str],
    error_frame: Callable[[Exception], str],
    tail: str | None = None,
) -> AsyncGenerator[str, None]:
    """Every chunk of `chunks` as `frame` writes it; an error ends the stream with `error_frame(error)` (headers
    are sent by then, so it is reported in-band), and `tail`, if given, comes last either way. Closes `chunks`."""
    async with aclosing(chunks):
        try:
            async for chunk in chunks:
                yield frame(chunk)
        except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, then end the stream properly
            yield error_frame(e)
    if tail is not None:
        yield tail


def sse_response(chunks: AsyncGenerator[BaseModel, None]) -> StreamingResponse:
    """Server-sent events: one `data: {json}` per chunk, an error chunk if generation fails, then `[DONE]`."""
    events = framed(chunks, _sse, lambda e: _sse(error_payload(e)), tail="data: [DONE]\n\n")
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
