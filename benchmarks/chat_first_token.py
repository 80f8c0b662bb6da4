"""`chatplex chat` as a person uses it: start it in a terminal, wait for the "User: " prompt, type a question, and
time from Enter to the first character of the answer (and to the answer's end), for a few questions in a row.

    .venv/bin/python benchmarks/chat_first_token.py [--args "--infer-dtype float32"] [--questions 3]

Runs the CLI in a pseudo-terminal (pty), so it reads and writes exactly as in a shell; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import shlex
import sys
import time

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Why is the sky blue?"]


def read_until(fd: int, marker: bytes, buffer: bytearray, timeout: float) -> float:
    """Read from `fd` until `marker` appears after what `buffer` already holds; the time it appeared."""
    start = len(buffer)
    deadline = time.monotonic() + timeout
    while marker not in buffer[start:]:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise TimeoutError(f"no {marker!r} within {timeout} s; output so far: {bytes(buffer[-500:])!r}")
        buffer += os.read(fd, 4096)
    return time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--args", default="", help="extra arguments for `chatplex chat`")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    opts = parser.parse_args()
    chatplex = os.path.join(os.path.dirname(sys.executable), "chatplex")
    argv = [chatplex, "chat", "--max-new-tokens", "64", *shlex.split(opts.args)]
    started = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    buffer = bytearray()
    ready = read_until(fd, b"User: ", buffer, 600)
    turns = []
    for question in QUESTIONS[: opts.questions]:
        os.write(fd, question.encode() + b"\r")
        sent = time.monotonic()
        read_until(fd, b"Assistant: ", buffer, 600)
        mark = len(buffer)
        while not buffer[mark:].strip():  # the first visible character of the answer
            select.select([fd], [], [], 600)
            buffer += os.read(fd, 4096)
        first = time.monotonic()
        done = read_until(fd, b"User: ", buffer, 600)
        turns.append({"question": question, "first_token_s": round(first - sent, 3), "answer_s": round(done - sent, 3)})
    os.write(fd, b"exit\r")
    os.waitpid(pid, 0)
    print(json.dumps({"command": " ".join(argv), "ready_s": round(ready - started, 2), "turns": turns}, indent=1))


if __name__ == "__main__":
    main()
