"""Starting the engine process: a listening Unix socket in a private folder, then `python -m
chatplex.engines.process.child PATH`, which connects to it.

A launch is its own step so that `chatplex serve` can take it first thing, before its frontend imports its HTTP
stack, torch and transformers (seconds on a GPU host): the engine process's own imports and CUDA start run
meanwhile. It imports only the standard library. ProcessEngine takes a launch over, or makes its own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Self

from chatplex.errors import EngineError


class EngineLaunch:
    """An engine process started and the socket it connects to, until `connect` hands over its connection."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="chatplex-engine-")  # mode 0700: only this user reaches the socket
        path = os.path.join(self.folder, "engine.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(path)
            self.listener.listen(1)
            self.listener.settimeout(0.2)
            self.proc = subprocess.Popen([sys.executable, "-m", "chatplex.engines.process.child", path])
        except BaseException:
            self._remove_socket()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:  # whatever was to take it over failed first
            self.kill()

    def connect(self) -> socket.socket:
        """The engine process's connection, once it has connected; the listening socket is gone afterwards. Raises
        EngineError if the process exits first (and kills it on any other error)."""
        try:
            while True:
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    code = self.proc.poll()
                    if code is not None:
                        raise EngineError(f"The engine process exited with code {code} before it started.") from None
                    continue
                conn.settimeout(None)
                return conn
        except BaseException:
            self.kill()
            raise
        finally:
            self._remove_socket()

    def kill(self) -> None:
        """Stop the engine process (it may still be loading the model, and it ignores SIGTERM); idempotent."""
        self.proc.kill()
        self.proc.wait()
        self._remove_socket()

    def _remove_socket(self) -> None:
        self.listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)
