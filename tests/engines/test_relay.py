"""engines/relay.py: a caller that falls behind gets each sequence's waiting deltas as one, in order, with nothing
lost (n > 1 interleaves sequences step by step: each is merged on its own); errors are raised after what came
before them; a caller that keeps up gets every delta as it was sent."""

from __future__ import annotations

import asyncio

import pytest

from chatplex.engines.relay import relay
from chatplex.types import Delta, TokenLogprob


def delta(index: int, token: int, done: int, finish: str | None = None) -> Delta:
    return Delta(index=index, text=f"t{token} ", token_ids=[token], prompt_tokens=5, completion_tokens=done,
                 logprobs=[TokenLogprob(token_id=token, token=f"t{token}", logprob=-0.5)],
                 finish_reason=finish, cached_tokens=4 if done == 1 else None)


async def consume(items: list, sequences: int, got: list) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:  # all waiting before the caller reads: it is behind by every one of them
        queue.put_nowait(item)
    async for d in relay(queue, sequences, lambda: None):
        got.append(d)


def test_waiting_deltas_of_one_sequence_come_out_as_one():
    got: list = []
    asyncio.run(consume([delta(0, 1, 1), delta(0, 2, 2), delta(0, 3, 3, "length")], 1, got))
    [merged] = got
    assert (merged.text, merged.token_ids, merged.completion_tokens) == ("t1 t2 t3 ", [1, 2, 3], 3)
    assert [lp.token_id for lp in merged.logprobs] == [1, 2, 3]
    assert (merged.finish_reason, merged.cached_tokens, merged.prompt_tokens) == ("length", 4, 5)


def test_interleaved_sequences_merge_each_on_its_own_and_an_error_comes_after_them():
    items = [delta(0, 1, 1), delta(1, 7, 1), delta(0, 2, 2), delta(1, 8, 2, "stop"), delta(0, 3, 3),
             RuntimeError("device lost")]
    got: list = []
    with pytest.raises(RuntimeError, match="device lost"):
        asyncio.run(consume(items, 2, got))
    assert [(d.index, d.token_ids, d.finish_reason) for d in got] == [(0, [1, 2, 3], None), (1, [7, 8], "stop")]


def test_a_caller_that_keeps_up_gets_every_delta():
    async def run() -> list:
        queue: asyncio.Queue = asyncio.Queue()
        out = []

        async def produce() -> None:
            for i in range(1, 4):
                queue.put_nowait(delta(0, i, i, "length" if i == 3 else None))
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        async for d in relay(queue, 1, lambda: None):
            out.append(d.token_ids)
        await producer
        return out

    assert asyncio.run(run()) == [[1], [2], [3]]
