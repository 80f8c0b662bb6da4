"""Frames between the frontend and the engine process: a 4-byte length, then a pickled Python object. Exceptions
cross as `RemoteError`s and become chatplex's own again on the other side (their constructors take keywords, which
pickle does not keep)."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any

from chatplex import errors

_HEADER = struct.Struct("!I")


def encode(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def send(sock: socket.socket, obj: Any) -> None:
    sock.sendall(encode(obj))


def recv(sock: socket.socket) -> Any:
    """The next frame's object; EOFError when the other end closed."""
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    return pickle.loads(_recv_exactly(sock, size))


async def read(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; asyncio.IncompleteReadError when the other end closed."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("the other end closed the connection")
        got += n
    return bytes(buf)


@dataclass
class RemoteError:
    """An exception raised in the other process: chatplex's own by class name, anything else as an EngineError."""

    kind: str
    message: str
    param: str | None = None
    code: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> RemoteError:
        if isinstance(exc, errors.ChatplexError):
            return cls(type(exc).__name__, exc.message, exc.param, exc.code)
        return cls("EngineError", f"The engine failed: {type(exc).__name__}: {exc}")

    def rebuild(self) -> errors.ChatplexError:
        kind = getattr(errors, self.kind, None)
        if not (isinstance(kind, type) and issubclass(kind, errors.ChatplexError)):
            kind = errors.EngineError
        exc = kind.__new__(kind)
        errors.ChatplexError.__init__(exc, self.message, param=self.param, code=self.code)
        return exc


@dataclass
class EngineFacts:
    """What the frontend needs to know of the loaded engine to check and render requests itself."""

    model_name: str
    vocab_size: int
    max_model_len: int
    is_reward_model: bool
    adapters: list[str]
    adapter_paths: dict[str, str]
    device: str
    dtype: str
    media_kinds: tuple[str, ...]
    score_label: str
    # Where more frontends connect (`chatplex serve --api-server-count N`): a Unix socket in a private folder.
    attach_path: str | None = None
