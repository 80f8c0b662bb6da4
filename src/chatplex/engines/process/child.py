"""The engine process: an HFEngine serving its frontend over the socket the frontend listens on (the package's
docstring says why and how), and any more frontends that attach. Started by client.ProcessEngine as
`python -m chatplex.engines.process.child PATH`.

Frames in: ("start", ChatplexArgs, log level) first, then ("generate", request id, GenerationRequest),
("abort", request id) and ("call", call id, method, args, kwargs). Frames out: ("ready", EngineFacts) or
("failed", RemoteError) after start, then ("out", [...]) once per event-loop turn, holding ("delta", request id,
Delta | RemoteError) and ("reply", call id, ok, value | RemoteError) items in the order they happened.

More frontends (`chatplex serve --api-server-count N`) connect to EngineFacts.attach_path, a Unix socket in a
private folder, send ("attach",) and get ("ready", EngineFacts); then the same frames. Each connection has its own
requests: one that closes aborts its own; the engine process ends when the first frontend's connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import aclosing
from typing import Any

from chatplex.engines.process import wire

logger = logging.getLogger(__name__)

# What the frontend may call on the engine, besides generate.
CALLS = frozenset({"score", "embed", "rerank", "load_adapter", "unload_adapter", "adapters", "adapter_paths"})
STATS_EVERY_S = 0.1  # the engine's counters go to the frontend this often when they changed (its stats() reads them)


class Host:
    """Runs the frontend's requests on the engine and batches what they produce into one frame per loop turn."""

    def __init__(
        self, engine: Any, writer: asyncio.StreamWriter, prefix: str = "", peers: set[Host] | None = None
    ) -> None:
        self.engine = engine
        self.writer = writer
        # Every frontend's Host (this one too): an adapter loaded through one is news to all.
        self.peers = peers if peers is not None else {self}
        self.peers.add(self)
        # Frontends number their requests each on its own: the engine sees them under a per-frontend prefix.
        self.prefix = prefix
        self.requests: dict[str, asyncio.Task[None]] = {}
        self._calls: set[asyncio.Task[None]] = set()
        self._out: list[tuple[Any, ...]] = []
        self._sent_stats: Any = None

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
            e.media_kinds,
            e.score_label,
        )

    def handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "generate":
            _, request_id, request = msg
            if self.prefix:
                request = dataclasses.replace(request, request_id=self.prefix + request.request_id)
            task = asyncio.create_task(self._stream(request_id, request))
            self.requests[request_id] = task
            # Here, not in _stream: a task cancelled before it first runs (its abort came in the same read) never
            # runs its own finally.
            task.add_done_callback(lambda _: self.requests.pop(request_id, None))
        elif kind == "abort":
            running = self.requests.get(msg[1])
            if running is not None:
                running.cancel()  # closing the engine's stream aborts the request there
        elif kind == "call":
            call = asyncio.create_task(self._call(*msg[1:]))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)
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
            if method in ("load_adapter", "unload_adapter"):
                for host in self.peers:
                    host._send(("adapters", self.engine.adapters, self.engine.adapter_paths))
            self._send(("reply", call_id, True, value))

    def _send(self, item: tuple[Any, ...]) -> None:
        if not self._out:
            # Every item of this loop turn (each request's deltas of one engine step arrive together) goes in one frame.
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(item)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.writer.is_closing():
            return
        try:
            frame = wire.encode(("out", out))
        except Exception:  # noqa: BLE001 - one value that does not pickle must not take the others' with it
            frame = wire.encode(("out", [_picklable(item) for item in out]))
        self.writer.write(frame)

    async def watch(self) -> None:
        """Send the engine's counters when they change; end this process if the engine thread has stopped (a
        device error): the frontend then fails its requests and the server exits for a supervisor to restart."""
        core = self.engine.core
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            if core.stopped_by is not None:
                logger.error("The engine thread stopped (%s): ending the engine process", core.stopped_by)
                self.writer.close()
                _remove_attach_folders()
                os._exit(1)
            stats = self.engine.stats()
            if stats != self._sent_stats:
                self._sent_stats = stats
                self._send(("stats", stats))

    async def cancel_requests(self) -> None:
        for task in list(self.requests.values()):
            task.cancel()
        await asyncio.gather(*self.requests.values(), return_exceptions=True)

    async def run(self, reader: asyncio.StreamReader, facts: wire.EngineFacts) -> None:
        """Say ready, then serve this frontend's frames until it closes the connection (or dies)."""
        self.writer.write(wire.encode(("ready", facts)))
        watcher = asyncio.create_task(self.watch())
        try:
            while True:
                self.handle(await wire.read(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.peers.discard(self)
            watcher.cancel()
            await self.cancel_requests()


async def serve(path: str) -> int:
    """Connect to the frontend, start the engine it asks for, serve it (and frontends that attach) until it goes;
    the exit code."""
    # torch and the engine (seconds) import while the frontend, started at the same time, gets to sending the
    # arguments; an import that fails there fails again below, where the frontend hears of it.
    imports = time.perf_counter()
    importer = threading.Thread(target=_import_engine, name="chatplex-engine-import", daemon=True)
    importer.start()
    reader, writer = await asyncio.open_unix_connection(path)
    _, args, log_level, accept_frontends = await wire.read(reader)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s [engine]: %(message)s")
    waited = time.perf_counter()
    await asyncio.to_thread(importer.join)
    from chatplex.engines.hf.engine import HFEngine

    logger.info(
        "Engine process: torch and the engine imported in %.1f s (the frontend's arguments came after %.1f s)",
        time.perf_counter() - imports,
        waited - imports,
    )
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
    attached: set[asyncio.Task[None]] = set()
    numbers = itertools.count(1)
    folder = server = None

    async def attach(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        attached.add(task)
        try:
            if await wire.read(reader) == ("attach",):
                peer = Host(engine, writer, prefix=f"frontend{next(numbers)}-", peers=host.peers)
                await peer.run(reader, dataclasses.replace(host.facts(), attach_path=None))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            attached.discard(task)
            writer.close()

    try:
        facts = host.facts()
        if accept_frontends:  # more frontends (`chatplex serve --api-server-count`) attach here
            folder = tempfile.mkdtemp(prefix="chatplex-attach-")  # mode 0700: only this user's processes attach
            _ATTACH_FOLDERS.append(folder)
            facts = dataclasses.replace(facts, attach_path=os.path.join(folder, "attach.sock"))
            server = await asyncio.start_unix_server(attach, facts.attach_path)
        await host.run(reader, facts)  # until the first frontend goes: the engine goes with it
    finally:
        if server is not None:
            server.close()
        for task in list(attached):
            task.cancel()
        await asyncio.gather(*attached, return_exceptions=True)
        _remove_attach_folders()
        await engine.close()
    return 0


def _import_engine() -> None:
    with contextlib.suppress(Exception):
        import chatplex.engines.hf.engine  # noqa: F401


_ATTACH_FOLDERS: list[str] = []  # removed at the end, also on the os._exit paths


def _remove_attach_folders() -> None:
    for folder in _ATTACH_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def _picklable(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """`item`, or its error in place of a value that does not pickle."""
    try:
        wire.encode(item)
        return item
    except Exception as e:  # noqa: BLE001
        error = wire.RemoteError("EngineError", f"The engine's answer could not be sent: {type(e).__name__}: {e}")
        return (item[0], item[1], False, error) if item[0] == "reply" else (item[0], item[1], error)


def exit_when_parent_goes(parent: int) -> None:
    """End this process when the process that started it is gone, even while it still loads or ignores signals."""
    while os.getppid() == parent:
        time.sleep(1.0)
    _remove_attach_folders()
    os._exit(1)


def main() -> None:
    # The frontend decides when this process ends (it closes the socket): a SIGTERM meant for a drain, or a ^C in
    # the terminal, reaches the whole process group and must not take the engine from under requests in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(
        target=exit_when_parent_goes, args=(os.getppid(),), name="chatplex-frontend-watch", daemon=True
    ).start()
    sys.exit(asyncio.run(serve(sys.argv[1])))


if __name__ == "__main__":
    main()
