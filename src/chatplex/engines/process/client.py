"""The frontend's side of the engine process: an Engine that renders and tokenizes prompts here and runs them in
the engine process (the package's docstring says why and how).

Sending is a blocking write on the caller's thread (frames are small); one receiver thread reads the engine's
frames and hands each one's deltas to the event loops with one thread-safe call per loop, as the in-process
engine thread does (hf.streams.deliver).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import socket
import subprocess
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from chatplex.config import ChatplexArgs
from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.engines.base import Engine, EngineStats, PromptPreparer
from chatplex.engines.fresh_thread import run_in_fresh_thread
from chatplex.engines.hf.streams import RequestStream, deliver
from chatplex.engines.process import wire
from chatplex.engines.process.launch import EngineLaunch
from chatplex.engines.relay import relay
from chatplex.errors import EngineClosedError, EngineError
from chatplex.media import media_items
from chatplex.templates import ChatTemplate
from chatplex.types import Delta, GenerationRequest

logger = logging.getLogger(__name__)


class ProcessEngine(Engine):
    backend = "huggingface"
    supports_constraints = True

    def __init__(
        self,
        args: ChatplexArgs,
        attach_path: str | None = None,
        accept_frontends: bool = False,
        launch: EngineLaunch | None = None,
    ) -> None:
        """`attach_path`: join an engine process another frontend started (its EngineFacts.attach_path) instead of
        starting one; `accept_frontends`: start one that more frontends may join (`attach_path` then says where);
        `launch`: the engine process to use, started earlier (launch.py says why), instead of starting one."""
        self.args = args
        self._launch = launch
        self._attach_path = attach_path
        self._accept_frontends = accept_frontends
        self.on_exit: Callable[[], None] | None = None  # called once if the engine process dies (not at close)
        self.prompts: PromptPreparer | None = None
        self._facts: wire.EngineFacts | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._streams: dict[str, RequestStream] = {}
        self._replies: dict[int, Callable[[bool, Any], None]] = {}
        self._call_ids = itertools.count()
        self._failure: EngineError | None = None  # set when the engine process died
        self._closing = False
        self._last_stats = EngineStats()

    # ---- start and stop -----------------------------------------------------------------------------------
    async def start(self) -> None:
        await run_in_fresh_thread(self._start)

    def _start(self) -> None:
        if self._attach_path is not None:
            self._attach(self._attach_path)
            return
        launch, self._launch = self._launch or EngineLaunch(), None
        self._proc = launch.proc
        conn = launch.connect()
        try:
            facts, tokenizer = self._handshake(conn)
            self.prompts = self._prompt_preparer(facts, tokenizer)
        except BaseException:
            conn.close()
            launch.kill()
            raise
        self._facts, self._sock = facts, conn
        threading.Thread(target=self._receive, name="chatplex-engine-receiver", daemon=True).start()
        logger.info(
            "Engine process %d serves %s on %s (%s)", self._proc.pid, facts.model_name, facts.device, facts.dtype
        )

    def _attach(self, path: str) -> None:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            wire.send(conn, ("attach",))
            kind, facts = wire.recv(conn)
            assert kind == "ready", kind
            self.prompts = self._prompt_preparer(facts, self._tokenizer())
        except (OSError, EOFError) as e:
            conn.close()
            raise EngineError(f"Cannot attach to the engine process at {path}: {e}") from None
        except BaseException:
            conn.close()
            raise
        self._facts, self._sock = facts, conn
        threading.Thread(target=self._receive, name="chatplex-engine-receiver", daemon=True).start()
        logger.info("Attached to the engine process serving %s on %s", facts.model_name, facts.device)

    def _tokenizer(self) -> Any:
        """The model's tokenizer (dummy weights: a word-level one of the shape's vocabulary, as the engine's)."""
        if self.args.model.dummy_weights:
            from chatplex.models.dummy import dummy_tokenizer, shape_vocab_size

            return dummy_tokenizer(shape_vocab_size(self.args.model.dummy_weights))
        return _load_tokenizer(self.args)

    def _prompt_preparer(self, facts: wire.EngineFacts, tokenizer: Any) -> PromptPreparer:
        return PromptPreparer.for_model(self.args.model, tokenizer, facts.max_model_len, facts.vocab_size)

    @property
    def attach_path(self) -> str | None:
        """Where more frontends join this engine process (None before it runs)."""
        return self._facts.attach_path if self._facts is not None else None

    def _handshake(self, conn: socket.socket) -> tuple[wire.EngineFacts, Any]:
        """Send the arguments, load the tokenizer while the engine process loads the model; its facts."""
        assert self._proc is not None
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        wire.send(conn, ("start", self.args, level, self._accept_frontends))
        tokenizer = self._tokenizer()  # while the engine process loads the model
        try:
            kind, payload = wire.recv(conn)
        except EOFError:
            raise EngineError(f"The engine process exited with code {self._proc.wait()} while loading.") from None
        if kind == "failed":
            raise payload.rebuild()
        return payload, tokenizer

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await run_in_fresh_thread(self._stop)
        self._fail_open(EngineClosedError("The engine was closed."))

    def _stop(self) -> None:
        if self._launch is not None:  # closed before it started
            self._launch.kill()
        if self._sock is not None:
            with contextlib.suppress(OSError):  # already gone
                self._sock.shutdown(socket.SHUT_RDWR)  # the engine process sees the end and closes its engine
            self._sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                logger.warning("The engine process did not stop within 60 s: killing it")
                self._proc.kill()
                self._proc.wait()

    @property
    def healthy(self) -> bool:
        return self._failure is None and not self._closing

    # ---- what the frontend knows ----------------------------------------------------------------------------
    def _loaded(self) -> wire.EngineFacts:
        if self._facts is None:
            raise EngineClosedError("The engine is not running.")
        return self._facts

    @property
    def model_name(self) -> str:
        return self._facts.model_name if self._facts is not None else "loading"

    @property
    def vocab_size(self) -> int | None:
        return self._loaded().vocab_size

    @property
    def max_model_len(self) -> int | None:
        return self._loaded().max_model_len

    @property
    def template(self) -> ChatTemplate | None:
        return self.prompts.template if self.prompts is not None else None

    @property
    def local_tokenizer(self) -> Any:
        return self.prompts.tokenizer if self.prompts is not None else None

    @property
    def is_reward_model(self) -> bool:
        return self._loaded().is_reward_model

    @property
    def adapters(self) -> list[str]:
        return list(self._facts.adapters) if self._facts is not None else []

    @property
    def adapter_paths(self) -> dict[str, str]:
        return dict(self._facts.adapter_paths) if self._facts is not None else {}

    @property
    def media_kinds(self) -> tuple[str, ...]:
        return self._facts.media_kinds if self._facts is not None else ()

    @property
    def score_label(self) -> str:
        return self._loaded().score_label

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompts().prompt_ids(request))

    def _prompts(self) -> PromptPreparer:
        if self.prompts is None:
            raise EngineClosedError("The engine is not running.")
        return self.prompts

    # ---- requests -----------------------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self._check_running()
        if not media_items(request):  # media is prepared beside the model; everything else is rendered here
            ids = self._prompts().prompt_ids(request)
            request = dataclasses.replace(request, messages=None, prompt=None, prompt_token_ids=ids)
        request_id = request.request_id
        stream = RequestStream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        try:
            self._send(("generate", request_id, request))
            abort = functools.partial(self._send_quietly, ("abort", request_id))
            async with aclosing(relay(stream.queue, request.sampling.n, abort)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            self._streams.pop(request_id, None)

    async def score(self, inputs: list[Any], max_length: int | None = None, truncation_side: str = "right") -> Any:
        return await self._call("score", inputs, max_length, truncation_side)

    async def embed(self, inputs: list[EmbeddingInput], **kwargs: Any) -> Embeddings:
        return await self._call("embed", inputs, **kwargs)

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        return await self._call("rerank", query, documents)

    async def load_adapter(self, name: str, path: str) -> None:
        await self._call("load_adapter", name, path)  # the new list comes before the reply (an "adapters" item)

    async def unload_adapter(self, name: str) -> None:
        await self._call("unload_adapter", name)

    def stats(self) -> EngineStats:
        """The engine's counters as it last sent them (it sends them within 0.1 s of a change)."""
        return dataclasses.replace(self._last_stats)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._check_running()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def resolve(ok: bool, value: Any) -> None:
            def settle() -> None:
                if not future.done():
                    future.set_result(value) if ok else future.set_exception(value)

            with contextlib.suppress(RuntimeError):  # the caller's loop has closed: nobody is waiting
                loop.call_soon_threadsafe(settle)

        call_id = next(self._call_ids)
        self._replies[call_id] = resolve
        try:
            self._send(("call", call_id, method, args, kwargs))
        except BaseException:
            self._replies.pop(call_id, None)
            raise
        return await future

    # ---- the wire ----------------------------------------------------------------------------------------
    def _check_running(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._sock is None or self._closing:
            raise EngineClosedError("The engine is not running.")

    def _send(self, frame: tuple[Any, ...]) -> None:
        self._check_running()
        assert self._sock is not None
        data = wire.encode(frame)
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as e:
            raise self._failure or EngineError(f"The engine process is gone: {e}") from None

    def _send_quietly(self, frame: tuple[Any, ...]) -> None:
        """An abort: nothing to do when the engine is gone (it took the request with it)."""
        try:
            self._send(frame)
        except (EngineError, EngineClosedError):
            pass

    def _receive(self) -> None:
        assert self._sock is not None
        try:
            while True:
                _, items = wire.recv(self._sock)
                out: list[tuple[RequestStream, Any]] = []
                for item in items:
                    if item[0] == "stats":
                        self._last_stats = item[1]
                    elif item[0] == "adapters":  # loaded or unloaded through any frontend
                        if self._facts is not None:
                            self._facts.adapters, self._facts.adapter_paths = item[1], item[2]
                    elif item[0] == "delta":
                        stream = self._streams.get(item[1])
                        if stream is not None:  # else its caller has gone (aborted)
                            value = item[2]
                            out.append((stream, value.rebuild() if isinstance(value, wire.RemoteError) else value))
                    else:
                        _, call_id, ok, value = item
                        resolve = self._replies.pop(call_id, None)
                        if resolve is not None:
                            resolve(ok, value if ok else value.rebuild())
                deliver(out)
        except (EOFError, OSError):
            pass
        except BaseException:  # a bug here must not leave every request hanging: treat it as the engine's end
            logger.exception("The engine process's frames could not be read")
        if self._closing:
            return
        code = None
        if self._proc is not None:  # else this frontend attached to another's engine process
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(timeout=5)
        self._failure = EngineError(f"The engine process stopped (exit code {code}); restart the server.")
        logger.error("%s", self._failure.message)
        self._fail_open(self._failure)
        if self.on_exit is not None:
            self.on_exit()

    def _fail_open(self, error: Exception) -> None:
        """End every open request and pending call with `error`."""
        streams, self._streams = list(self._streams.values()), {}
        deliver([(stream, error) for stream in streams])
        replies, self._replies = list(self._replies.values()), {}
        for resolve in replies:
            resolve(False, error)


def _load_tokenizer(args: ChatplexArgs) -> Any:
    from chatplex.engines.hf import loader

    return loader.load_tokenizer(args.model)
