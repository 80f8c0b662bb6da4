"""Run the app under uvicorn: load the model while already answering /health, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import uvicorn

from chatplex.chat_model import ChatModel
from chatplex.server.app import create_app
from chatplex.server.frontends import ExtraFrontends
from chatplex.server.settings import ServerSettings
from chatplex.server.state import ServerState

if TYPE_CHECKING:
    from chatplex.engines.process.launch import EngineLaunch

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """SIGTERM drains: /health and new requests get 503, in-flight requests finish (at most `drain_timeout`
    seconds), then the process exits 0. SIGINT, or a second signal, stops at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_signal: Callable[[int], None] | None = None  # passes signals on to the extra frontends
        # An extra frontend may get a SIGTERM twice (from its supervisor's group kill and passed on by the first
        # frontend): the second must not cut its drain short.
        self.repeated_sigterm_drains = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Not uvicorn's handler: it re-raises the signal after shutdown, which would make the exit code -15.
        if self.on_signal is not None:
            self.on_signal(sig)
        if sig == signal.SIGTERM and self.state.draining and self.repeated_sigterm_drains:
            return
        if sig == signal.SIGTERM and not self.state.draining and self._loop is not None:
            self.state.draining = True
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))
            return
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    async def _drain(self) -> None:
        timeout = self.state.settings.drain_timeout
        if not await self.state.drain(timeout):
            logger.warning("Drain timeout (%.0f s): stopping %d requests in flight.", timeout, self.state.in_flight)
            await self.state.stop_in_flight()
        self.should_exit = True


def _server(settings: ServerSettings, log_level: str) -> tuple[DrainingServer, ServerState]:
    app = create_app(None, settings)
    state: ServerState = app.state.server
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        root_path=settings.root_path,
        log_level=log_level.lower(),
        # What is left after a drain (requests stopped, connections closing) needs well under a second.
        timeout_graceful_shutdown=0.5,  # type: ignore[arg-type]  # uvicorn's stub says int; it takes a float
    )
    return DrainingServer(config, state), state


def serve(
    model_args: dict[str, Any],
    settings: ServerSettings,
    log_level: str = "warning",
    launch: EngineLaunch | None = None,
) -> int:
    """Serve until stopped; returns the exit code. Raises the model's load error if loading failed. `launch`: the
    engine process (engine_process on), started before this module's imports (cli/serve.py)."""
    started = time.perf_counter()
    server, state = _server(settings, log_level)
    # Several frontends share one listening socket, bound here before any of them starts.
    sock = server.config.bind_socket() if settings.api_server_count > 1 else None
    loaded: dict[str, Any] = {}
    # Held while the loaded model is published and its frontends start, and while the server, stopping, decides
    # what to close: a model that finishes loading as the server stops is closed, not left running.
    publishing = threading.Lock()
    extra = ExtraFrontends()

    def engine_died() -> None:  # an engine process that dies takes the server down, for a supervisor to restart
        loaded["engine_died"] = True
        server.should_exit = True

    def frontend_died() -> None:  # so does an extra frontend process
        loaded["frontend_died"] = True
        server.should_exit = True

    def load() -> None:  # in the background, so /health answers 503 "loading" meanwhile
        try:
            if sock is None and launch is None:
                model = ChatModel(model_args)
            else:  # an engine process started already, or one the extra frontends can join
                from chatplex.config import load_args
                from chatplex.engines.process.client import ProcessEngine

                engine = ProcessEngine(load_args(model_args), accept_frontends=sock is not None, launch=launch)
                model = ChatModel(model_args, engine=engine)
            with publishing:
                if "stopped" in loaded:
                    model.close()
                    return
                if hasattr(model.engine, "on_exit"):
                    model.engine.on_exit = engine_died
                loaded["model"] = state.chat_model = model
                if not model.engine.healthy:  # it died before on_exit was set
                    engine_died()
                if sock is not None:
                    server.on_signal = extra.signal
                    extra.start(
                        settings.api_server_count - 1,
                        sock,
                        model.engine.attach_path,  # type: ignore[attr-defined]  # a ProcessEngine (checked at start)
                        model_args,
                        settings,
                        log_level,
                        frontend_died,
                    )
            logger.warning(
                "chatplex serve: %s ready on http://%s:%d in %.1f s",
                state.model_name,
                settings.host,
                settings.port,
                time.perf_counter() - started,
            )
        except BaseException as e:  # noqa: BLE001 - re-raised once the server has stopped
            if "stopped" not in loaded:  # not the engine process stopped below
                loaded["error"] = e
            server.should_exit = True

    threading.Thread(target=load, name="chatplex-load", daemon=True).start()
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        with publishing:
            loaded["stopped"] = True
        extra.stop(settings.drain_timeout + 10)  # their requests need the engine: it closes after them
        if "model" in loaded:
            loaded["model"].close()
        elif launch is not None:  # stopped while the model loads: the engine process goes too
            launch.kill()
    if "error" in loaded:
        raise loaded["error"]
    if loaded.get("engine_died") or loaded.get("frontend_died"):
        what = "the engine process" if loaded.get("engine_died") else "a frontend process"
        logger.error("chatplex serve: %s died; exiting with code 1", what)
        return 1
    return 0


def serve_attached(
    model_args: dict[str, Any],
    settings: ServerSettings,
    log_level: str,
    attach_path: str,
    sock: Any,
    stopped: list[int],
    index: int,
) -> int:
    """An extra frontend (server/frontends.py): serve `sock` in front of the engine process at `attach_path`;
    `stopped` holds the signals that came while it started (then it does not serve)."""
    from chatplex.config import load_args
    from chatplex.engines.process.client import ProcessEngine

    server, state = _server(settings, log_level)
    server.repeated_sigterm_drains = True
    died: list[bool] = []

    def engine_died() -> None:
        died.append(True)
        server.should_exit = True

    model = ChatModel(model_args, engine=ProcessEngine(load_args(model_args), attach_path))
    model.engine.on_exit = engine_died  # type: ignore[attr-defined]  # a ProcessEngine
    state.chat_model = model
    try:
        if not model.engine.healthy:
            return 1
        if stopped:  # told to stop before it served anything
            return 0
        logger.warning("chatplex serve: frontend %d ready", index)
        server.run(sockets=[sock])
    finally:
        model.close()
    return 1 if died else 0


def exit_without_teardown(code: int) -> NoReturn:
    """End a server process once everything is closed (requests, engine, sockets). Python's own teardown of torch
    and transformers would still take 0.5-2 s on a small machine, which a SIGTERM caller waiting on
    `--drain-timeout` would see as the server overrunning it; so the process ends here, after flushing its output."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
