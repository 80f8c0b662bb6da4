"""More HTTP frontends in front of one engine process (`chatplex serve --api-server-count N`).

The first frontend is `chatplex serve`'s own process: it starts the engine process (engines/process) and binds the
port. Each extra frontend is a process of its own (`python -m chatplex.server.frontends`, its settings on stdin)
that inherits the listening socket, so the kernel hands each new connection to one of them, and attaches to the
engine process (EngineFacts.attach_path). Every frontend parses, templates, tokenizes and streams in its own
interpreter; the engine process runs one scheduler for all of them.

Lifecycle: the first frontend forwards SIGTERM (a drain) to the others and waits for them before it closes the
engine; an extra frontend that exits on its own makes the whole server exit 1 (a supervisor restarts it), as an
engine process that dies does (each frontend sees its connection close and exits 1).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class ExtraFrontends:
    """The extra frontend processes of one server, and what to do if one of them ends on its own."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: bool = False
    signalled: int | None = None  # the signal passed on (SIGTERM: they finish their requests and stop by themselves)

    def start(
        self,
        count: int,
        sock: socket.socket,
        attach_path: str,
        model_args: dict[str, Any],
        settings: Any,
        log_level: str,
        on_death: Callable[[], None],
    ) -> None:
        for index in range(1, count + 1):
            proc = subprocess.Popen(
                [sys.executable, "-m", "chatplex.server.frontends"],
                stdin=subprocess.PIPE,
                pass_fds=[sock.fileno()],
                start_new_session=True,  # a terminal's ^C reaches the first frontend, which passes it on once
            )
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps((model_args, settings, log_level, attach_path, sock.fileno(), index)))
            proc.stdin.close()
            self.processes.append(proc)
            if self.signalled is not None:  # the server was told to stop while this one started
                proc.send_signal(self.signalled)
            watch = threading.Thread(target=self._watch, args=(proc, on_death), name="chatplex-frontend-watch")
            watch.daemon = True
            watch.start()

    def _watch(self, proc: subprocess.Popen[bytes], on_death: Callable[[], None]) -> None:
        code = proc.wait()
        if self.stopping or self.signalled is not None:  # told to stop: an idle one ends its drain first
            return
        logger.error("chatplex serve: frontend process %d exited with code %s; stopping the server", proc.pid, code)
        on_death()

    def signal(self, sig: int) -> None:
        if self.signalled is None or sig != signal.SIGTERM:
            self.signalled = sig
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(sig)

    def stop(self, timeout: float) -> None:
        """After the first frontend has stopped: the others stop (after their drain, if one was asked) or are
        killed after `timeout` seconds. A signal meanwhile (a second ^C or SIGTERM) stops them at once."""
        self.stopping = True
        if self.signalled != signal.SIGTERM:
            self.signal(signal.SIGINT)
        if self.processes and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.signal(signal.SIGINT))
        for proc in self.processes:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    """An extra frontend: attach to the engine process and serve the inherited socket until stopped."""
    # A stop that comes while this process still starts (imports, tokenizer, attaching) is kept for then.
    stopped: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _: stopped.append(number))
    model_args, settings, log_level, attach_path, fd, index = pickle.load(sys.stdin.buffer)
    logging.basicConfig(level=log_level.upper(), format=f"%(levelname)s %(name)s [frontend {index}]: %(message)s")
    # The first frontend decides when this one ends; if it is killed outright, this one goes too (else it would
    # keep the port from a restarted server).
    from chatplex.engines.process.child import exit_when_parent_goes

    parent_watch = threading.Thread(target=exit_when_parent_goes, args=(os.getppid(),), name="chatplex-parent-watch")
    parent_watch.daemon = True
    parent_watch.start()
    from chatplex.server.runner import exit_without_teardown, serve_attached

    exit_without_teardown(
        serve_attached(model_args, settings, log_level, attach_path, socket.socket(fileno=fd), stopped, index)
    )


if __name__ == "__main__":
    main()
