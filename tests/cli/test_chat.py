"""`chatplex chat` driven for real: the installed command in a pseudo-terminal with the embedded SmolLM2 (greedy).

One pexpect session checks history, `clear`, a bad turn and `exit`; another checks Ctrl-C mid-reply and at the
prompt, `--show-prompt` and `--tools`. An in-process test sends a real SIGINT to check the engine aborts.
"""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect  # in the `test` extra; a missing one should fail loudly, not skip
import pytest

from chatplex.cli.chat import ASSISTANT_PREFIX, STOPPED_MARK, USER_PROMPT, ChatSession

pytestmark = pytest.mark.slow

CHATPLEX = str(Path(sys.executable).with_name("chatplex"))
FAST = ["--infer-dtype", "float32", "--temperature", "0"]
TIMEOUT = 90  # per expect: loading the model takes ~10 s on 2 shared cores


def spawn(*args: str) -> pexpect.spawn:
    # TERM=dumb keeps readline from writing terminal control sequences between the lines we match.
    env = dict(os.environ, TERM="dumb", TOKENIZERS_PARALLELISM="false")
    child = pexpect.spawn(CHATPLEX, ["chat", *args], encoding="utf-8", timeout=TIMEOUT, env=env, dimensions=(40, 4000))
    child.expect_exact("Loading")
    child.expect("SmolLM2-135M-Instruct.*clear.*exit")  # the banner names the model and the commands
    child.expect_exact(USER_PROMPT)
    return child


def turn(child: pexpect.spawn, text: str) -> str:
    """Send one user turn; return everything printed before the next prompt (the reply, or the error)."""
    child.sendline(text)
    child.expect_exact(USER_PROMPT)
    return child.before


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_history_clear_bad_turn_and_exit() -> None:
    child = spawn(*FAST, "--max-new-tokens", "24", "--max-model-len", "192")
    try:
        assert "Paris" in turn(child, "What is the capital of France?")
        # Greedy SmolLM2 repeats "The capital of France is Paris." only if it sees the first exchange.
        assert "Paris" in turn(child, "Repeat your previous answer.")
        assert "History cleared." in turn(child, "clear")
        assert "Paris" not in turn(child, "Repeat your previous answer.")
        # A prompt longer than the context is an error for this turn only.
        out = turn(child, "hello " * 300)
        assert "error:" in out and "context length" in out
        assert "Paris" in turn(child, "What is the capital of France?")
        child.sendline("exit")
        assert finish(child) == 0
    finally:
        child.close(force=True)


def test_ctrl_c_stops_reply_show_prompt_and_tools(tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]))
    # A ChatML template that lists the tools, so --show-prompt proves they reach the renderer.
    template = tmp_path / "tools.jinja"
    template.write_text(
        "{%- if tools -%}<|im_start|>system\nTools: {% for t in tools %}{{ t.function.name }} {% endfor %}"
        "<|im_end|>\n{% endif -%}"
        "{%- for m in messages -%}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
    )
    child = spawn(*FAST, "--max-new-tokens", "400", "--show-prompt", "--tools", str(tools),
                  "--chat-template", str(template))
    try:
        child.sendline("Write a long story about a dragon.")
        child.expect_exact("--- prompt ---")
        child.expect_exact("Tools: get_weather")
        child.expect_exact("<|im_start|>user\r\nWrite a long story about a dragon.<|im_end|>")
        child.expect_exact(ASSISTANT_PREFIX)
        child.expect(r"\w\w")  # the reply has started streaming
        child.send("\x03")
        child.expect_exact(STOPPED_MARK)  # the reply was cut, not finished (400 tokens take many seconds)
        child.expect_exact(USER_PROMPT)

        # The session goes on, with the question and the partial reply kept in the history.
        out = turn(child, "What is the capital of France?")
        assert "Write a long story about a dragon.<|im_end|>\r\n<|im_start|>assistant\r\n" in out
        reply = out.rsplit(ASSISTANT_PREFIX, 1)[1]
        assert reply.strip() and "error" not in reply

        child.send("\x03")  # at the prompt: a new prompt line, the session stays
        child.expect_exact("Ctrl-C again")
        child.expect_exact(USER_PROMPT)
        child.send("\x03")  # twice in a row: quit
        assert finish(child) == 0
    finally:
        child.close(force=True)


def test_eof_quits() -> None:
    child = spawn(*FAST)
    try:
        child.sendeof()
        assert finish(child) == 0
    finally:
        child.close(force=True)


def test_ctrl_c_aborts_generation_in_engine(chat_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGINT mid-reply closes the stream: the engine counts an abort and stops decoding it."""
    lines = iter(["Write a long story about a dragon.", "exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    before = chat_model.stats().aborted_requests

    class InterruptAfterStart:
        """stdout stand-in that sends SIGINT to this process once the reply has begun streaming."""

        def __init__(self) -> None:
            self.text = ""
            self.sent = False

        def write(self, s: str) -> None:
            self.text += s
            if not self.sent and len(self.text.split(ASSISTANT_PREFIX, 1)[-1]) > 8 and ASSISTANT_PREFIX in self.text:
                self.sent = True
                # From another thread, as a terminal would: the main thread is blocked waiting for the next delta.
                threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()

        def flush(self) -> None:
            pass

    out = InterruptAfterStart()
    session = ChatSession(chat_model, out=out)
    assert session.loop() == 0
    assert out.text.rstrip().endswith(STOPPED_MARK.strip())
    partial = out.text.split(ASSISTANT_PREFIX, 1)[1].split(STOPPED_MARK)[0]
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.history[1]["content"] == partial
    # The abort reaches the engine thread at its next step; wait (bounded) for it to drop the request.
    deadline = time.monotonic() + 30
    while chat_model.stats().running and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = chat_model.stats()
    assert stats.running == 0
    assert stats.aborted_requests == before + 1


def test_bad_model_path_exits_2() -> None:
    result = subprocess.run([CHATPLEX, "chat", "--model", "/nonexistent/model"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model_name_or_path" in lines[0] and "/nonexistent/model" in lines[0]
    assert "Loading" not in result.stdout  # rejected before loading anything


def test_directory_without_a_model_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([CHATPLEX, "chat", "--model", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # the library may log warnings first; the error is one line
    assert last.startswith("chatplex chat: error: model_name_or_path:") and str(tmp_path) in last


@pytest.mark.parametrize(
    "args, named",
    [
        (["--set", "no_such_key=1"], "no_such_key"),
        (["--tools", "/nonexistent/tools.json"], "--tools"),
        (["--temperature", "hot"], "--temperature"),
    ],
)
def test_bad_args_exit_2(args: list[str], named: str) -> None:
    result = subprocess.run([CHATPLEX, "chat", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert named in result.stderr


def test_help_lists_every_option() -> None:
    from chatplex.cli.main import build_parser

    top = subprocess.run([CHATPLEX, "--help"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0 and "chat" in top.stdout
    chat_help = subprocess.run([CHATPLEX, "chat", "--help"], capture_output=True, text=True, timeout=120)
    assert chat_help.returncode == 0
    subparsers = next(a for a in build_parser()._actions if a.choices and "chat" in a.choices)
    options = [s for a in subparsers.choices["chat"]._actions for s in a.option_strings]
    for required in ("--model", "--template", "--infer-backend", "--system", "--set", "--temperature",
                     "--max-new-tokens", "--tools", "--show-prompt"):
        assert required in options
    for option in options:
        assert option in chat_help.stdout, option
    for command in ("clear", "exit", "Ctrl-C"):
        assert command in chat_help.stdout
