"""The engine process: an HFEngine serving one frontend over the socket the frontend listens on (the package's
docstring says why and how). Started by client.ProcessEngine as `python -m chatplex.engines.process.child PATH`.

Frames in: ("start", ChatplexArgs, log level) first, then ("generate", request id, GenerationRequest),
("abort", request id) and ("call", call id, method, args, kwargs). Frames out: ("ready", EngineFacts) or
("failed", RemoteError) after start, then ("out", [...]) once per event-loop turn, holding ("delta", request id,
Delta | RemoteError) and ("reply", call id, ok, value | RemoteError) items in the order they happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from contextlib import aclosing
from typing import Any

from chatplex.engines.process import wire

logger = logging.getLogger(__name__)

# What the frontend may call on the engine, besides generate.
CALLS = frozenset({"score", "embed", "rerank", "load_adapter", "unload_adapter", "stats", "adapters", "adapter_paths"})


class Host:
    """Runs the frontend's requests on the engine and batches what they produce into one frame per loop turn."""

    def __init__(self, engine: Any, writer: asyncio.StreamWriter) -> None:
        self.engine = engine
        self.writer = writer
        self.requests: dict[str, asyncio.Task[None]] = {}
        self._out: list[tuple[Any, ...]] = []

    def facts(self) -> wire.EngineFacts:
        e = self.engine
        return wire.EngineFacts(
            e.model_name,
            e.vocab_size,
            e.max_model_len,
            e.is_reward_model,
            e.adapters,
            e.adapter_paths,
            str(e.device),
            str(e.dtype).removeprefix("torch."),
        )

    def handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "generate":
            _, request_id, request = msg
            self.requests[request_id] = asyncio.create_task(self._stream(request_id, request))
        elif kind == "abort":
            task = self.requests.get(msg[1])
            if task is not None:
                task.cancel()  # closing the engine's stream aborts the request there
        elif kind == "call":
            asyncio.create_task(self._call(*msg[1:]))
        else:
            logger.error("Engine process: unknown frame %r from the frontend", kind)

    async def _stream(self, request_id: str, request: Any) -> None:
        try:
            async with aclosing(self.engine.generate(request)) as deltas:
                async for delta in deltas:
                    self._send(("delta", request_id, delta))
        except asyncio.CancelledError:
            pass  # aborted by the frontend, which has stopped listening
        except Exception as e:  # noqa: BLE001 - the request's error goes to its caller; the engine keeps serving
            self._send(("delta", request_id, wire.RemoteError.of(e)))
        finally:
            self.requests.pop(request_id, None)

    async def _call(self, call_id: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            if method not in CALLS:
                raise ValueError(f"not an engine call: {method}")
            value = getattr(self.engine, method)
            if callable(value):
                value = value(*args, **kwargs)
            if asyncio.iscoroutine(value):
                value = await value
        except Exception as e:  # noqa: BLE001 - the caller gets it
            self._send(("reply", call_id, False, wire.RemoteError.of(e)))
        else:
            self._send(("reply", call_id, True, value))

    def _send(self, item: tuple[Any, ...]) -> None:
        if not self._out:
            # Every item of this loop turn (each request's deltas of one engine step arrive together) goes in one frame.
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(item)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not self.writer.is_closing():
            self.writer.write(wire.encode(("out", out)))

    async def close(self) -> None:
        for task in list(self.requests.values()):
            task.cancel()
        await asyncio.gather(*self.requests.values(), return_exceptions=True)
        await self.engine.close()


async def serve(path: str) -> int:
    """Connect to the frontend, start the engine it asks for, serve it until it goes; the exit code."""
    reader, writer = await asyncio.open_unix_connection(path)
    _, args, log_level = await wire.read(reader)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s [engine]: %(message)s")
    from chatplex.engines.hf.engine import HFEngine  # after the frontend is connected: torch takes seconds

    engine = HFEngine(args)
    try:
        await engine.start()
    except Exception as e:  # noqa: BLE001 - the frontend raises it where ChatModel was created
        writer.write(wire.encode(("failed", wire.RemoteError.of(e))))
        with contextlib.suppress(ConnectionError):  # the frontend may have failed first (its tokenizer) and gone
            await writer.drain()
        await engine.close()
        return 1
    host = Host(engine, writer)
    writer.write(wire.encode(("ready", host.facts())))
    try:
        while True:
            host.handle(await wire.read(reader))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the frontend closed the connection (or died): the engine goes with it
    finally:
        await host.close()
    return 0


def main() -> None:
    # The frontend decides when this process ends (it closes the socket): a SIGTERM meant for a drain, or a ^C in
    # the terminal, reaches the whole process group and must not take the engine from under requests in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(asyncio.run(serve(sys.argv[1])))


if __name__ == "__main__":
    main()
