"""The non-streaming reply: a reply's deltas folded into one Anthropic `Message`."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from chatplex.server.anthropic.blocks import BlockWriter
from chatplex.server.anthropic.schemas import Message
from chatplex.types import Delta


async def message(
    rid: str, model: str, deltas: AsyncGenerator[tuple[int, Delta], None], stop_sequences: list[str] | None
) -> Message:
    """The whole message; `deltas` is one request's stream as `streaming.open_all` gives it."""
    writer = BlockWriter(stop_sequences)
    async with aclosing(deltas):
        async for _, delta in deltas:
            writer.feed(delta)
    writer.finish()
    return Message(
        id=rid,
        model=model,
        content=writer.content(),
        stop_reason=writer.stop_reason or "end_turn",
        stop_sequence=writer.stop_sequence,
        usage=writer.usage,
    )
